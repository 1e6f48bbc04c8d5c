"""Copying a pvc:// or file:// source without following a symbolic link out of it.

A claim is written by whoever can write the PersistentVolumeClaim, and the loader runs with the
model's credentials in its environment: a link such as `model.py -> /proc/self/environ` inside a
claim would copy those credentials into the model that Triton serves. So a local source is
copied into the loader's work directory, once, by this module, and every later step (checksum,
conversion, the repository) reads the copy:

- pvc://CLAIM/PATH must stay inside the claim: the named path, followed through any links, must
  lie under the claim's mount.
- file:///PATH names a file or directory itself: its last component must not be a link, and it
  may not be under /proc, /sys or /dev (the loader's own process and devices).
- Inside a directory source, a link to a file inside the directory is copied as a regular file;
  a link that leads outside the directory, a link to a directory (it could loop), a dangling link
  and anything that is not a regular file or directory (FIFO, socket, device) are refused, and the
  message names the link and where it points.

Directories are opened with O_NOFOLLOW relative to their parent's descriptor and files with
O_NOFOLLOW, so a link swapped in while the copy runs is refused rather than followed; on Linux
the path behind every opened descriptor (/proc/self/fd) is checked again after opening.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Final

from .errors import FetchError, SourceRefused
from .limits import ByteBudget

FORBIDDEN_ROOTS: Final = ("/proc", "/sys", "/dev")
MAX_DEPTH: Final = 64
CHUNK: Final = 1 << 20
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer


def inside(path: str, root: str) -> bool:
    """Whether the (resolved) `path` is `root` or below it."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or os.path.commonpath([path, root]) == root


def _fd_path(fd: int) -> str | None:
    """Where an open descriptor really is (Linux), or None where /proc cannot say."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("/") else None


class _Copier:
    """One source's copy: the root every path must stay under, the budget, and how to name it."""

    def __init__(self, root: str, shown: str, budget: ByteBudget | None) -> None:
        self.root = root
        self.shown = shown
        self.budget = budget
        self.copied = 0

    def _where(self, rel: PurePosixPath) -> str:
        return f"{self.shown}: {rel}" if str(rel) not in ("", ".") else self.shown

    def _os_error(self, e: OSError, rel: PurePosixPath) -> FetchError:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return SourceRefused(f"{self._where(rel)} changed into a symbolic link while it was copied")
        if e.errno == errno.EACCES:
            return FetchError(f"{self._where(rel)} is not readable by uid {os.getuid()}")
        return FetchError(f"cannot read {self._where(rel)}: {e.strerror or e.__class__.__name__}")

    def _check_opened(self, fd: int, rel: PurePosixPath) -> None:
        real = _fd_path(fd)
        if real is not None and not inside(real, self.root):
            raise SourceRefused(f"{self._where(rel)} leads outside the source (to {real}); refusing to copy it")

    def open_file(self, name: str | Path, rel: PurePosixPath, dir_fd: int | None = None) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            raise self._os_error(e, rel) from None
        try:
            self._check_opened(fd, rel)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceRefused(f"{self._where(rel)} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_dir(self, name: str | Path, rel: PurePosixPath, dir_fd: int | None = None) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)
        except OSError as e:
            raise self._os_error(e, rel) from None
        try:
            self._check_opened(fd, rel)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def copy_fd(self, fd: int, target: Path, rel: PurePosixPath) -> None:
        """Copy an open regular file (closes it), counting its bytes against the budget as they come."""
        with os.fdopen(fd, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            if self.budget is not None:
                self.budget.check(self.copied + size, self.shown, self._size_detail(rel, size))
            written = 0
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            try:
                with os.fdopen(out, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if self.budget is not None:  # a file that grows while it is copied
                            self.budget.check(self.copied + written, self.shown,
                                              f"{self._name(rel)} grew past it while it was copied")
                        dst.write(chunk)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
        self.copied += written

    @staticmethod
    def _name(rel: PurePosixPath) -> str:
        return str(rel) if str(rel) not in ("", ".") else "it"

    def _size_detail(self, rel: PurePosixPath, size: int) -> str:
        done = f", after {self.copied} bytes of its other files" if self.copied else ""
        return f"{self._name(rel)} is {size} bytes{done}"

    def copy_dir(self, dir_fd: int, real_dir: str, target: Path, rel: PurePosixPath, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SourceRefused(f"{self._where(rel)} is nested more than {MAX_DEPTH} directories deep")
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(dir_fd)):
            here = rel / name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                raise self._os_error(e, here) from None
            if stat.S_ISDIR(st.st_mode):
                fd = self.open_dir(name, here, dir_fd)
                try:
                    self.copy_dir(fd, _fd_path(fd) or os.path.join(real_dir, name), target / name, here, depth + 1)
                finally:
                    os.close(fd)
            elif stat.S_ISREG(st.st_mode):
                self.copy_fd(self.open_file(name, here, dir_fd), target / name, here)
            elif stat.S_ISLNK(st.st_mode):
                self.copy_fd(self._open_link(dir_fd, real_dir, name, here), target / name, here)
            else:
                raise SourceRefused(f"{self._where(here)} is not a regular file, directory or symbolic link")

    def _open_link(self, dir_fd: int, real_dir: str, name: str, rel: PurePosixPath) -> int:
        """A link inside the source: its target file, if that is inside the source too."""
        try:
            link = os.readlink(name, dir_fd=dir_fd)
        except OSError as e:
            raise self._os_error(e, rel) from None
        resolved = os.path.realpath(os.path.join(real_dir, name))
        said = f"{self._where(rel)} is a symbolic link to {link!r}"
        if not inside(resolved, self.root):
            raise SourceRefused(f"{said}, outside the source; refusing to follow it")
        if not os.path.exists(resolved):
            raise SourceRefused(f"{said}, which does not exist")
        if os.path.isdir(resolved):
            raise SourceRefused(f"{said}, a directory: links to directories are not followed")
        return self.open_file(resolved, rel)


def _prescan(root: str) -> int:
    """Bytes of the regular files under `root` (links not followed): a quick early refusal."""
    total = 0
    for dirpath, _, files in os.walk(root, followlinks=False):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def copy_source(src: Path, boundary: Path | None, dest: Path, name: str, shown: str,
                budget: ByteBudget | None) -> Path:
    """Copy the local source `src` to `dest/name` and return the copy.

    `boundary` is the mount of a pvc:// claim (the source must stay inside it), None for file://.
    `shown` names the source in messages. Raises SourceRefused, SizeLimitError or FetchError.
    """
    if not os.path.lexists(src):
        raise FetchError(f"{shown} does not exist")
    real = os.path.realpath(src)
    if boundary is not None:
        claim = os.path.realpath(boundary)
        if not inside(real, claim):
            raise SourceRefused(f"{shown} leads out of the claim through a symbolic link (to {real}); refusing it")
    elif os.path.islink(src):
        raise SourceRefused(f"{shown} is a symbolic link (to {os.readlink(src)!r}): name the file itself")
    if any(inside(real, forbidden) for forbidden in FORBIDDEN_ROOTS):
        raise SourceRefused(f"{shown} is under {', '.join(FORBIDDEN_ROOTS)}: not a model source")
    if not os.path.exists(real):
        raise FetchError(f"{shown} is a symbolic link to nothing")
    if not os.access(real, os.R_OK):
        raise FetchError(f"{shown} is not readable by uid {os.getuid()}")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    top = PurePosixPath(".")
    if os.path.isdir(real):
        copier = _Copier(real, shown, budget)
        if budget is not None:
            total = _prescan(real)
            budget.check(total, shown, f"its files total {total} bytes")
        fd = copier.open_dir(real, top)
        try:
            copier.copy_dir(fd, real, target, top, 0)
        finally:
            os.close(fd)
    else:
        copier = _Copier(os.path.realpath(boundary) if boundary is not None else real, shown, budget)
        copier.copy_fd(copier.open_file(real, top), target, top)
    if budget is not None:
        budget.add(copier.copied)
    return target


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a directory the loader made itself (an unpacked archive, a copied source) into the model,
    with the same refusals and no byte budget."""
    copier = _Copier(os.path.realpath(src), str(src), None)
    fd = copier.open_dir(os.path.realpath(src), PurePosixPath("."))
    try:
        copier.copy_dir(fd, os.path.realpath(src), dest, PurePosixPath("."), 0)
    finally:
        os.close(fd)
