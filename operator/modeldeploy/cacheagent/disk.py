"""The cache directory on the node: its layout, the check of a copy, and the rebuild after a restart.

    <dir>/<key>/manifest.json          the store's manifest, byte for byte
    <dir>/<key>/model/<relative path>  the files, each checked against it when it was filled
    <dir>/<key>/.verified.json         size, mtime, ctime and inode of each file when it was checked
    <dir>/.fill-<key>-<random>/        a fill in progress (same layout), renamed to <key> when complete
    <dir>/.drop-<key>-<random>/        a copy being deleted (evicted or corrupt)

A copy appears under its key only by the rename of a complete, verified fill, so an agent killed
at any moment leaves complete copies and `.fill-`/`.drop-` leftovers, which the next start
deletes. The rebuild checks each copy cheaply (manifest parses and is that key's; exactly its
files, with their sizes, no links); the bytes are checked when served (NodeCache.open_file).

`.verified.json` lets a restarted agent trust files nobody touched since they were hashed without
hashing them again: any write, truncation or chmod changes a file's ctime, which user space cannot
set back. A file whose stat differs is hashed before it is served. The directory's mtime records
when the artifact was last used (LRU order survives restarts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..artifact.errors import ManifestError
from ..artifact.key import is_key
from ..artifact.manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, verify
from ..artifact.store import MODEL_DIR
from ..artifact.transfer import parse_manifest

FILL_PREFIX: Final = ".fill-"
DROP_PREFIX: Final = ".drop-"
SIGNATURES_FILE: Final = ".verified.json"


@dataclass(frozen=True)
class Sig:
    """What a file looked like when its bytes were checked. Equal later means nobody wrote it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Sig:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class Copy:
    """A complete artifact in the cache directory."""

    key: str
    manifest: Manifest
    manifest_bytes: bytes  # served as they came from the store
    trusted: dict[str, Sig] = field(default_factory=dict)  # files known good while their stat is this
    last_used: float = 0.0

    @property
    def size(self) -> int:
        return self.manifest.total_bytes


def artifact_dir(root: Path, key: str) -> Path:
    return root / key


def model_path(root: Path, key: str, rel: str) -> Path:
    return root / key / MODEL_DIR / rel


def read_signatures(path: Path) -> dict[str, Sig]:
    """The sidecar's signatures; empty when it is missing or unreadable (then files are hashed)."""
    try:
        doc = json.loads(path.read_bytes())
        return {str(rel): Sig(*(int(v) for v in values)) for rel, values in doc.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def write_signatures(path: Path, sigs: Mapping[str, Sig]) -> None:
    doc = {rel: [s.size, s.mtime_ns, s.ctime_ns, s.ino] for rel, s in sorted(sigs.items())}
    path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")


def signatures_of(model_dir: Path, manifest: Manifest) -> dict[str, Sig]:
    """Each file's current stat (right after it was hashed on arrival)."""
    return {rel: Sig.of(os.lstat(model_dir / rel)) for rel in manifest.files}


def load_copy(root: Path, key: str) -> Copy | str:
    """The copy under `key` if it is complete (cheap checks only: no hashing), else why not."""
    base = artifact_dir(root, key)
    if base.is_symlink() or not base.is_dir():
        return "not a directory"
    mpath = base / MANIFEST_FILE
    if mpath.is_symlink() or not mpath.is_file():
        return "no manifest (an incomplete copy)"
    try:
        with open(mpath, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        manifest = parse_manifest(data, key)
    except (OSError, ManifestError) as e:
        return f"manifest unusable: {e}"
    if problems := verify(base / MODEL_DIR, manifest, content=False):
        return problems[0]
    return Copy(key=key, manifest=manifest, manifest_bytes=data, trusted=read_signatures(base / SIGNATURES_FILE),
                last_used=base.stat().st_mtime)


def remove_tree(path: Path) -> None:
    """Delete a leftover or discarded tree; never follows a link out of it."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink()
        else:
            shutil.rmtree(path)


def discard(root: Path, key: str) -> Path | None:
    """Take the copy out of its place at once (a rename: a fill may put a new one there right away,
    and responses still reading it keep their open files); the caller deletes the returned path."""
    trash = root / f"{DROP_PREFIX}{key}-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(artifact_dir(root, key), trash)
    except FileNotFoundError:
        return None
    return trash


def new_fill_dir(root: Path, key: str) -> Path:
    path = root / f"{FILL_PREFIX}{key}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


@dataclass
class Rebuilt:
    """What a start found in the directory."""

    copies: list[Copy] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # .fill-/.drop- leftovers, deleted
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (key, why), deleted
    ignored: list[str] = field(default_factory=list)  # not the agent's: left alone


def rebuild(root: Path) -> Rebuilt:
    """Index the directory after a (re)start: keep complete copies, delete partial fills, discarded
    copies and incomplete or invalid copies; leave anything else alone (a misconfigured hostPath
    must not cost a node its files)."""
    out = Rebuilt()
    with os.scandir(root) as it:
        names = sorted(e.name for e in it)
    for name in names:
        path = root / name
        if name.startswith((FILL_PREFIX, DROP_PREFIX)):
            remove_tree(path)
            out.partial.append(name)
        elif is_key(name):
            found = load_copy(root, name)
            if isinstance(found, Copy):
                out.copies.append(found)
            else:
                remove_tree(path)
                out.invalid.append((name, found))
        else:
            out.ignored.append(name)
    return out
