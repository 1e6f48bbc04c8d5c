"""Failures the loader reports: each carries the one-line reason a user reads in the pod's status."""

from __future__ import annotations


class LoaderError(Exception):
    """A load failure with a reason fit for the termination message (one line, no secrets)."""

    exit_code = 1


class ConfigError(LoaderError):
    """The loader's inputs are invalid: retrying can never help."""

    exit_code = 2


class FetchError(LoaderError):
    """The source could not be fetched and retrying will not help (403, 404, bad URI)."""


class SourceRefused(FetchError):
    """The source is not something the loader will copy: a link out of it, a redirect that would
    hand credentials to another host or downgrade to http, a special file. Retrying cannot help."""


class SizeLimitError(FetchError):
    """The source is larger than the download limit (MD_MAX_DOWNLOAD_BYTES). Deterministic: exit 1."""


class TransientFetchError(FetchError):
    """A fetch failure worth retrying (5xx, connection reset, timeout).

    Its exit code (sysexits' EX_TEMPFAIL) tells the operator the revision is not broken: the kubelet
    restarts the loader with backoff, and the revision is never recorded as failed for it.
    """

    exit_code = 75


class IntegrityError(LoaderError):
    """The fetched bytes are not the ones the spec names (sha256 mismatch)."""


class FormatError(LoaderError):
    """The fetched file is not a model of the declared format."""


class ConversionError(LoaderError):
    """Conversion to ONNX failed or the converted model disagrees with the original."""


class QuantizationRejected(LoaderError):
    """The int8 model is less accurate or slower than allowed, so it is not served."""
