"""Where artifacts live, and the one layout every store and cache shares.

    <prefix>/<key>/manifest.json          written last: the commit marker
    <prefix>/<key>/model/<relative path>  the Triton model directory, file by file

An artifact exists if and only if its manifest exists. A builder uploads every file first and
the manifest last, so a reader that finds a manifest finds the files it lists, and a build that
dies half-way leaves no manifest, i.e. "not built". Two builders of one key may race: each
upload is idempotent for identical content (same key, same intended bytes), whole objects are
replaced atomically (S3 PUT, rename on a filesystem), and each builder checks the store after
its manifest is written (transfer.publish), so whichever writes last sees, and repairs, any mix
of the two. Readers verify every byte against the manifest anyway.

Stores are configured by a URI (MD_ARTIFACT_STORE): `s3://BUCKET[/PREFIX]` for an S3-compatible
bucket, with its own credentials in MD_STORE_AWS_* (never the model source's AWS_*), or
`file:///PATH` for a directory such as a mounted PersistentVolumeClaim.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ..loader.errors import ConfigError
from .errors import StoreConfigError
from .key import is_key
from .manifest import MANIFEST_FILE, path_problem

MODEL_DIR: Final = "model"
STORE_ENV: Final = "MD_ARTIFACT_STORE"
STORE_ENV_PREFIX: Final = "MD_STORE_"  # MD_STORE_AWS_ACCESS_KEY_ID ... : the store's own credentials
STORE_SECRET_ENV: Final = ("MD_STORE_AWS_ACCESS_KEY_ID", "MD_STORE_AWS_SECRET_ACCESS_KEY", "MD_STORE_AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class Digest:
    """What a download wrote: its size and sha256 (hashed as the bytes arrived)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """A stored file's size, and its sha256 when the store knows it without reading the bytes
    (the builder's x-amz-meta-sha256 on S3; computed on a directory store)."""

    size: int
    sha256: str | None


class ArtifactReader(Protocol):
    """Read access by key: what a serving pod needs (a store, or the node's cache agent)."""

    def where(self, key: str) -> str:
        """The artifact's location for messages (never a credential)."""
        ...

    def read_manifest(self, key: str) -> bytes | None:
        """The manifest's bytes, or None when the artifact is not built."""
        ...

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        """Write the file `rel` of the artifact to `dest`, hashing it on the way. Stops after
        `size` + 1 bytes (the caller compares the digest with the manifest). FetchError if absent."""
        ...


class ArtifactStore(ArtifactReader, Protocol):
    """A store the builder writes: files first, the manifest last."""

    def stat(self, key: str, rel: str) -> ObjectInfo | None:
        """Size (and sha256 where cheaply known) of a stored file; None when absent."""
        ...

    def upload(self, key: str, rel: str, src: Path, sha256: str, size: int) -> None:
        """Store `src` as file `rel`, replacing any earlier copy whole."""
        ...

    def write_manifest(self, key: str, data: bytes) -> None:
        """Commit the artifact: after this, readers see it."""
        ...

    def delete_manifest(self, key: str) -> None:
        """Un-commit the artifact (before a corrupt one is rebuilt); no error when absent."""
        ...


def check_key(key: str) -> str:
    """The key, or ConfigError: it becomes part of a path or object name."""
    if not is_key(key):
        raise ConfigError(f"{key!r} is not an artifact key (want <name>-<32 hex digits>)")
    return key


def check_rel(rel: str) -> str:
    """A manifest path, or ConfigError: it may not lead out of the artifact."""
    if reason := path_problem(rel):
        raise ConfigError(f"refusing artifact file {rel!r}: {reason}")
    return rel


def manifest_name(prefix: str, key: str) -> str:
    """`<prefix>/<key>/manifest.json` (no leading slash; prefix may be empty)."""
    return "/".join(p for p in (prefix.strip("/"), check_key(key), MANIFEST_FILE) if p)


def file_name(prefix: str, key: str, rel: str) -> str:
    """`<prefix>/<key>/model/<rel>`."""
    return "/".join(p for p in (prefix.strip("/"), check_key(key), MODEL_DIR, check_rel(rel)) if p)


def store_env(env: Mapping[str, str]) -> dict[str, str]:
    """The store's AWS_* settings from MD_STORE_AWS_*: the model source's credentials (AWS_*) are a
    user's, the store's are the platform's, and a build Job holds both."""
    return {k.removeprefix(STORE_ENV_PREFIX): v for k, v in env.items() if k.startswith(STORE_ENV_PREFIX + "AWS_")}


def open_store(
    location: str,
    env: Mapping[str, str],
    *,
    attempts: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 0.5,
) -> ArtifactStore:
    """The store a URI names: s3://BUCKET[/PREFIX] or file:///PATH; StoreConfigError otherwise."""
    parts = urllib.parse.urlsplit(location.strip())
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc or "@" in parts.netloc or parts.query:
            raise StoreConfigError(f"{STORE_ENV} must look like s3://BUCKET[/PREFIX] (no credentials, no query)")
        from .s3store import S3Store

        return S3Store(parts.netloc, urllib.parse.unquote(parts.path).strip("/"), store_env(env),
                       attempts=attempts, timeout_s=timeout_s, backoff_s=backoff_s)
    if scheme == "file":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StoreConfigError(f"{STORE_ENV} must look like file:///ABSOLUTE/PATH")
        from .dirstore import DirStore

        return DirStore(Path(path))
    shown = scheme or "(none)"
    raise StoreConfigError(f"{STORE_ENV}: unsupported scheme {shown}: use s3://BUCKET[/PREFIX] or file:///PATH")
