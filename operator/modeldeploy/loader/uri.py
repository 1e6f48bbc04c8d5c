"""Source URIs: parsed once into a typed value, and shown to users without credentials.

A URI may carry secrets (user:password@ in http, a presigned query string), so every message
uses `display()`, never the raw string.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import ConfigError

SCHEMES: Final = ("s3", "gs", "http", "https", "pvc", "file")


@dataclass(frozen=True)
class SourceURI:
    """scheme plus, per scheme: bucket/key (s3, gs), claim/path (pvc), path (file), url (http)."""

    scheme: str
    raw: str
    bucket: str = ""  # s3/gs bucket, or pvc claim
    key: str = ""  # s3/gs key, pvc path inside the claim, or file path

    @property
    def is_directory(self) -> bool:
        """A key or path ending in '/' names a directory (docs/loader-contract.md)."""
        return self.raw.endswith("/")

    @property
    def basename(self) -> str:
        """The last path segment, used to recognise archives by their suffix."""
        path = urllib.parse.urlsplit(self.raw).path if self.scheme in ("http", "https") else self.key
        return posixpath.basename(path.rstrip("/"))

    def display(self) -> str:
        """The URI without userinfo or query string, safe for logs and status."""
        if self.scheme in ("http", "https"):
            parts = urllib.parse.urlsplit(self.raw)
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.bucket else f"{self.scheme}://{self.key}"

    def local_path(self, source_mount: Path) -> Path:
        """The file a pvc:// or file:// URI names on this machine (pvc claims are mounted at source_mount)."""
        if self.scheme == "file":
            return Path(self.key)
        if self.scheme == "pvc":
            return source_mount / self.key
        raise ValueError(f"{self.scheme}:// is not a local path")


def _clean_key(key: str, uri: str) -> str:
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"source URI must not contain '.' or '..' segments: {uri!r}")
    return "/".join(parts) + ("/" if key.endswith("/") and parts else "")


def parse(uri: str) -> SourceURI:
    """Parse and check a source URI; ConfigError with a reason for anything unusable."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = scheme or "(none)"
        raise ConfigError(f"unsupported source URI scheme {shown}: use one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError("http(s) source URI has no host")
        return SourceURI(scheme=scheme, raw=uri)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("file:// URIs must be absolute paths on this machine (file:///PATH)")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError("file:// URI needs an absolute path")
        return SourceURI(scheme=scheme, raw=uri, key="/" + _clean_key(path, uri))
    # s3, gs, pvc: the authority is the bucket or claim, the path is the key inside it.
    bucket = parts.netloc
    key = urllib.parse.unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        what = "CLAIM/PATH" if scheme == "pvc" else "BUCKET/KEY"
        raise ConfigError(f"{scheme}:// URI must look like {scheme}://{what}")
    if "@" in bucket or parts.query:
        raise ConfigError(f"{scheme}:// URI must not carry credentials or a query string")
    return SourceURI(scheme=scheme, raw=uri, bucket=bucket, key=_clean_key(key, uri))
