"""One fill: the whole artifact from the store into a private directory, every file checked.

The files are downloaded and hashed by the same code a serving pod's fetch uses
(artifact.transfer.download_artifact: a file that arrives wrong is downloaded once more, then the
store's copy is reported corrupt), so the agent holds exactly what a direct fetch would have
accepted. Nothing is visible under the key until NodeCache renames the finished directory into
place; a fill that fails or is killed leaves only a `.fill-` directory, deleted at once or at the
next start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..artifact.errors import ArtifactCorrupt, ArtifactNotBuilt, ManifestError
from ..artifact.manifest import MANIFEST_FILE, Manifest, verify
from ..artifact.store import MODEL_DIR, ArtifactReader
from ..artifact.transfer import download_artifact, parse_manifest
from .disk import SIGNATURES_FILE, Sig, new_fill_dir, remove_tree, signatures_of, write_signatures


@dataclass(frozen=True)
class Wanted:
    """An artifact's manifest as the store has it: read before the fill, to size it."""

    manifest: Manifest
    data: bytes


@dataclass(frozen=True)
class Staged:
    """A complete, verified fill, not yet in place."""

    path: Path
    downloaded: int  # bytes taken from the store (a file retried counts twice)
    sigs: Mapping[str, Sig]  # each file's stat right after it was hashed on arrival


def read_wanted(store: ArtifactReader, key: str) -> Wanted:
    """The store's manifest of `key`: ArtifactNotBuilt without one, ArtifactCorrupt when unusable."""
    data = store.read_manifest(key)
    if data is None:
        raise ArtifactNotBuilt(f"artifact {key} is not built: no manifest at {store.where(key)}")
    try:
        return Wanted(parse_manifest(data, key), data)
    except ManifestError as e:
        raise ArtifactCorrupt(f"artifact corrupt: {store.where(key)}/manifest.json: {e}") from None


def stage(store: ArtifactReader, root: Path, key: str, wanted: Wanted) -> Staged:
    """Download and check every file into `root/.fill-<key>-*`; the directory is removed on failure."""
    path = new_fill_dir(root, key)
    try:
        model_dir = path / MODEL_DIR
        got = download_artifact(store, key, wanted.manifest, model_dir)
        if problems := verify(model_dir, wanted.manifest, content=False):  # the tree: nothing extra or linked
            raise ArtifactCorrupt(f"artifact corrupt: {store.where(key)}: {problems[0]}")
        sigs = signatures_of(model_dir, wanted.manifest)
        write_signatures(path / SIGNATURES_FILE, sigs)
        (path / MANIFEST_FILE).write_bytes(wanted.data)  # last, like the store's commit marker
    except BaseException:
        remove_tree(path)
        raise
    retried = sum(wanted.manifest.files[rel].size for rel in got.retried)
    return Staged(path=path, downloaded=got.bytes + retried, sigs=sigs)
