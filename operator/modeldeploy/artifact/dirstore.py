"""An artifact store in a directory: a PersistentVolumeClaim mounted in the build Job (read-write)
and in serving pods (read-only), or any local path.

Each file is written to a temporary name beside its target, flushed, and renamed over it, so a
reader sees either a whole old file or a whole new one, never a half-written one; the manifest is
written the same way, last. Reads never follow a symbolic link: a pre-seeded tree holding one is
treated as corrupt rather than allowed to point the reader at another file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import Final

from ..loader.checksum import sha256_of
from .errors import ArtifactCorrupt, StoreConfigError
from .manifest import MAX_MANIFEST_BYTES
from .store import Digest, ObjectInfo, file_name, manifest_name

CHUNK: Final = 1 << 20
_TMP: Final = ".tmp-"


class DirStore:
    """ArtifactStore over a directory tree with the store layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, key: str) -> str:
        return f"file://{self.root / key}"

    def _root(self) -> Path:
        if not self.root.is_dir():
            raise StoreConfigError(f"artifact store directory {self.root} does not exist (is the volume mounted?)")
        return self.root

    def _path(self, name: str) -> Path:
        return self._root() / name

    def _open_nofollow(self, path: Path) -> int | None:
        """A read-only descriptor of a regular file reached without any link, or None when absent."""
        rel = path.relative_to(self.root).parts
        where = f"file://{path}"
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, part in enumerate(rel):
                last = i == len(rel) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
                try:
                    nxt = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    return None
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ArtifactCorrupt(f"{where}: a symbolic link or non-directory on the way") from None
                    raise
                os.close(fd)
                fd = nxt
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ArtifactCorrupt(f"{where}: not a regular file")
            out, fd = fd, -1
            return out
        finally:
            if fd >= 0:
                os.close(fd)

    def read_manifest(self, key: str) -> bytes | None:
        fd = self._open_nofollow(self._path(manifest_name("", key)))
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(MAX_MANIFEST_BYTES + 1)

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        path = self._path(file_name("", key, rel))
        fd = self._open_nofollow(path)
        if fd is None:
            raise ArtifactCorrupt(f"file://{path}: listed in the manifest but missing from the store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "rb") as src, open(dest, "wb") as out:
            while written <= size and (chunk := src.read(min(CHUNK, size + 1 - written))):
                h.update(chunk)
                out.write(chunk)
                written += len(chunk)
        return Digest(written, h.hexdigest())

    def stat(self, key: str, rel: str) -> ObjectInfo | None:
        path = self._path(file_name("", key, rel))
        try:
            fd = self._open_nofollow(path)
        except ArtifactCorrupt:
            return ObjectInfo(-1, None)  # there, but not usable: the builder replaces it
        if fd is None:
            return None
        os.close(fd)
        return ObjectInfo(path.stat().st_size, sha256_of(path))

    def _replace(self, target: Path, data: bytes | None, src: Path | None) -> None:
        """Write `data` or a copy of `src` to `target` via a temporary file and a rename."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or (target.exists() and not target.is_file()):
                if target.is_dir() and not target.is_symlink():
                    raise ArtifactCorrupt(f"file://{target}: a directory where a file belongs")
                target.unlink()
            tmp = target.parent / f"{_TMP}{uuid.uuid4().hex[:12]}-{target.name}"
            try:
                with open(tmp, "wb") as out:
                    if data is not None:
                        out.write(data)
                    elif src is not None:
                        with open(src, "rb") as f:
                            while chunk := f.read(CHUNK):
                                out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        except PermissionError as e:
            raise StoreConfigError(f"cannot write the artifact store at {self.root}: {e.strerror}") from None

    def upload(self, key: str, rel: str, src: Path, sha256: str, size: int) -> None:
        self._replace(self._path(file_name("", key, rel)), None, src)

    def write_manifest(self, key: str, data: bytes) -> None:
        self._replace(self._path(manifest_name("", key)), data, None)

    def delete_manifest(self, key: str) -> None:
        try:
            self._path(manifest_name("", key)).unlink(missing_ok=True)
        except PermissionError as e:
            raise StoreConfigError(f"cannot write the artifact store at {self.root}: {e.strerror}") from None
