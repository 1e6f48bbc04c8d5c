"""Checking bytes against the manifest: before a file is served, and while it streams (pure I/O helpers).

A cached file is served only if it is exactly the manifest's file. `file_problem` hashes a file
before it is served when the agent cannot vouch for it; `stream_verified` hashes every response
as it goes and holds its last chunk back until the whole file matched, so a reader never receives
a complete wrong file: a wrong one arrives short, which the fetch side treats like any other bad
download (it fetches that file from the store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO, Final

from ..artifact.manifest import FileEntry

CHUNK: Final = 1 << 20


def file_problem(f: BinaryIO, want: FileEntry) -> str | None:
    """Hash an open file from its start; why it is not the manifest's file, or None when it is."""
    f.seek(0)
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    f.seek(0)
    if size != want.size:
        return f"size {size}, manifest says {want.size}"
    if h.hexdigest() != want.sha256:
        return "sha256 does not match the manifest"
    return None


def stream_verified(src: BinaryIO, write: Callable[[bytes], object], want: FileEntry,
                    chunk_size: int = CHUNK) -> tuple[int, str | None]:
    """Send `want.size` bytes of `src` through `write`, hashing them; the last chunk is sent only
    once the whole file matched the manifest, so a reader never receives a complete wrong file
    (it sees a short body and fetches the file from the store). Returns the bytes sent and the
    problem, None when the file matched."""
    h = hashlib.sha256()
    pending = b""
    sent = read = 0
    while read < want.size:
        chunk = src.read(min(chunk_size, want.size - read))
        if not chunk:
            break
        h.update(chunk)
        read += len(chunk)
        if pending:
            write(pending)
            sent += len(pending)
        pending = chunk
    if read != want.size or src.read(1):
        return sent, f"size changed while serving (manifest says {want.size})"
    if h.hexdigest() != want.sha256:
        return sent, "sha256 does not match the manifest"
    if pending:
        write(pending)
        sent += len(pending)
    return sent, None
