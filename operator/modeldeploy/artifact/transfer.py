"""Moving artifacts: download with every file checked, upload with the manifest last.

Download: each file is hashed as it arrives and compared with the manifest; a file that arrives
wrong is downloaded once more (from the store, when the first try came through the node cache),
and if it is still wrong the store's copy is bad: ArtifactCorrupt names the file, and the
operator rebuilds.

Upload (publish): files first, skipping any the store already holds with the same size and
sha256 (a retry, or a concurrent builder's identical bytes), then the manifest, then a check of
what the store now holds. If another builder of the same key wrote meanwhile and left files that
do not match the manifest now in the store, this builder writes its complete set again: the
last writer always checks after its last write, so the race ends in one consistent artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..loader.errors import TransientFetchError
from .errors import ArtifactCorrupt, ManifestError
from .manifest import Manifest, short
from .report import log
from .store import ArtifactReader, ArtifactStore, check_rel

PUBLISH_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class Downloaded:
    """What a download took: files, bytes and which files needed a second try."""

    files: int
    bytes: int
    retried: tuple[str, ...] = ()


def _arrival_problem(reader: ArtifactReader, key: str, rel: str, dest: Path, size: int, sha256: str) -> str | None:
    """Download one file; why it is not the manifest's file, or None when it is."""
    try:
        got = reader.download(key, rel, dest, size)
    except ArtifactCorrupt as e:  # absent from the store or the cache
        return str(e)
    if got.size != size:
        return f"size {got.size}, manifest says {size}"
    if got.sha256 != sha256:
        return f"sha256 mismatch (manifest {short(sha256)}, downloaded {short(got.sha256)})"
    return None


def download_artifact(
    reader: ArtifactReader,
    key: str,
    manifest: Manifest,
    dest_dir: Path,
    *,
    retry: ArtifactReader | None = None,
) -> Downloaded:
    """Every file of `manifest` under `dest_dir`, each one checked; ArtifactCorrupt naming the first
    file that is wrong twice (the second try from `retry`, the store, when given)."""
    second = retry or reader
    retried: list[str] = []
    for rel, want in sorted(manifest.files.items()):
        dest = dest_dir / check_rel(rel)
        problem = _arrival_problem(reader, key, rel, dest, want.size, want.sha256)
        if problem is None:
            continue
        log.warning("%s: %s; downloading it again", rel, problem)
        retried.append(rel)
        problem = _arrival_problem(second, key, rel, dest, want.size, want.sha256)
        if problem is not None:
            dest.unlink(missing_ok=True)
            raise ArtifactCorrupt(f"artifact corrupt: {second.where(key)}/model/{rel}: {problem}")
    return Downloaded(files=len(manifest.files), bytes=manifest.total_bytes, retried=tuple(retried))


def parse_manifest(data: bytes, key: str) -> Manifest:
    """A manifest read for `key`, checked; ManifestError (exit 65) if it is not that key's."""
    manifest = Manifest.from_json(data)
    if manifest.key != key:
        raise ManifestError(f"manifest under {key} describes {manifest.key}")
    return manifest


def stored_problems(store: ArtifactStore, key: str, manifest: Manifest) -> list[str]:
    """Files in the store that do not match `manifest` by size or by the sha256 the store knows
    (cheap: no download). Files whose sha256 the store cannot tell count as mismatches."""
    problems: list[str] = []
    for rel, want in sorted(manifest.files.items()):
        info = store.stat(key, rel)
        if info is None:
            problems.append(f"{rel}: missing")
        elif info.size != want.size:
            problems.append(f"{rel}: size {info.size}, manifest says {want.size}")
        elif info.sha256 != want.sha256:
            problems.append(f"{rel}: sha256 {short(info.sha256 or '')}, manifest says {short(want.sha256)}")
    return problems


@dataclass(frozen=True)
class Published:
    """The manifest the store holds after publishing (ours, or an equal build's) and what was sent."""

    manifest: Manifest
    uploaded: int


def publish(
    store: ArtifactStore, key: str, model_dir: Path, manifest: Manifest, attempts: int = PUBLISH_ATTEMPTS
) -> Published:
    """Upload `model_dir` as artifact `key`: files, then the manifest, then a check of the result."""
    ours = manifest.to_json()
    uploaded = 0
    for attempt in range(1, attempts + 1):
        for rel, want in sorted(manifest.files.items()):
            info = store.stat(key, rel)
            if info is not None and info.size == want.size and info.sha256 == want.sha256:
                continue  # already there: a retry, or another builder's identical bytes
            store.upload(key, rel, model_dir / check_rel(rel), want.sha256, want.size)
            uploaded += 1
        store.write_manifest(key, ours)
        data = store.read_manifest(key)
        if data is None:
            problems = ["the manifest is gone (another builder is replacing a corrupt copy)"]
        else:
            try:
                current = parse_manifest(data, key)
            except ManifestError as e:
                problems = [str(e)]
            else:
                problems = stored_problems(store, key, current)
                if not problems:
                    if data != ours:
                        log.info("artifact %s: a concurrent build committed the same key; its copy checks out", key)
                    return Published(manifest=current, uploaded=uploaded)
        log.warning("artifact %s changed under a concurrent build (%s); writing it again (%d/%d)",
                    key, problems[0], attempt, attempts)
    raise TransientFetchError(f"artifact {store.where(key)} kept changing under concurrent builds; try again")
