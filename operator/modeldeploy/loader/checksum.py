"""The optional integrity check: the fetched file must have the SHA-256 the spec names."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ConfigError, IntegrityError


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (models can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    """IntegrityError unless the file's SHA-256 is `expected`; no-op when nothing is expected."""
    if not expected:
        return
    if path.is_dir():
        raise ConfigError("sha256 can only be checked for a single file, but the source is a directory")
    got = sha256_of(path)
    if got != expected.lower():
        raise IntegrityError(f"sha256 mismatch: want {expected[:12]}…, got {got[:12]}…")
