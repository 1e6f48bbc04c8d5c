"""Failures of the artifact commands, each with the exit code the operator acts on.

The loader's own errors keep their codes (1 deterministic, 2 invalid input, 75 transient); these
add what only an artifact can go wrong with. Codes follow sysexits.h, like the loader's 75.
"""

from __future__ import annotations

from typing import Final

from ..loader.errors import LoaderError

EXIT_CORRUPT: Final = 65  # EX_DATAERR
EXIT_NOT_BUILT: Final = 66  # EX_NOINPUT
EXIT_STORE_CONFIG: Final = 77  # EX_NOPERM


class ArtifactCorrupt(LoaderError):
    """The store's copy does not match its manifest (or the manifest is unreadable).

    Retrying the download cannot help: the operator should rebuild the artifact.
    """

    exit_code = EXIT_CORRUPT


class ArtifactNotBuilt(LoaderError):
    """No manifest under the key: the artifact was never built, or a build has not committed yet."""

    exit_code = EXIT_NOT_BUILT


class StoreConfigError(LoaderError):
    """The artifact store refuses us or is misconfigured (bad URI, 401/403, no such bucket).

    This is the platform's configuration, not the revision's fault: the operator must not mark the
    revision failed for it, only say so and retry once the store is fixed.
    """

    exit_code = EXIT_STORE_CONFIG


class ManifestError(ArtifactCorrupt):
    """A manifest that does not parse or breaks the format's rules."""
