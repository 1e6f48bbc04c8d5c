"""`python -m modeldeploy.artifact fetch`: what a serving pod's init container runs.

Reads the artifact's manifest by key (from the node cache agent when MD_ARTIFACT_CACHE_URL is set,
else from the store), downloads every file into a staging directory inside the repository,
checking each against the manifest as it arrives, and renames the finished model directory into
place (loader/repository.py), so Triton never sees a partial or unverified model.

Imports neither torch, onnxruntime nor numpy: serving pods run this in a small image
(tests/unit/test_artifact_imports.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..loader.errors import ConfigError, FetchError, SizeLimitError
from ..loader.limits import human
from ..loader.repository import Staging
from .cache import FallbackReader, HttpReader
from .errors import ArtifactCorrupt, ArtifactNotBuilt, ManifestError
from .manifest import Manifest, verify
from .options import FetchSettings, check_model_name
from .report import log
from .store import ArtifactReader, ArtifactStore, open_store
from .transfer import download_artifact, parse_manifest


def load_manifest(reader: ArtifactReader, store: ArtifactReader, key: str) -> Manifest:
    """The manifest of `key`: ArtifactNotBuilt when there is none, ArtifactCorrupt when it is bad.
    A bad manifest from the cache sends us to the store's."""
    data = reader.read_manifest(key)
    if data is None:
        raise ArtifactNotBuilt(f"artifact {key} is not built: no manifest at {store.where(key)}")
    try:
        return parse_manifest(data, key)
    except ManifestError as e:
        if reader is store:
            raise ArtifactCorrupt(f"artifact corrupt: {store.where(key)}/manifest.json: {e}") from None
        log.warning("node cache: bad manifest for %s (%s); reading the store's", key, e)
        return load_manifest(store, store, key)


def run(s: FetchSettings, env: Mapping[str, str], store: ArtifactStore | None = None) -> dict[str, Any]:
    """Fetch and commit the artifact; the JSON-able result. Raises a LoaderError on failure."""
    started = time.monotonic()
    store = store or open_store(s.store, env, attempts=s.attempts, timeout_s=s.timeout_s)
    reader: ArtifactReader = store
    cached: FallbackReader | None = None
    if s.cache_url:
        try:
            cached = FallbackReader(HttpReader(s.cache_url, timeout_s=min(s.timeout_s, 10.0)), store)
            reader = cached
        except FetchError as e:  # a cache can make a start faster, never break it
            log.warning("node cache not used: %s", e)
    manifest = load_manifest(reader, store, s.key)
    name = check_model_name(manifest.model_name, "the manifest's modelName")
    if s.model_name and s.model_name != name:
        raise ConfigError(f"artifact {s.key} was built for model name {name!r}, not {s.model_name!r}")
    if manifest.total_bytes > s.max_bytes:
        raise SizeLimitError(f"artifact {s.key} holds {human(manifest.total_bytes)}, more than the limit "
                             f"{human(s.max_bytes)} (MD_MAX_DOWNLOAD_BYTES)")
    with Staging(s.repository, name) as stage:
        got = download_artifact(reader, s.key, manifest, stage.model_dir, retry=store)
        # every file was hashed on arrival; this checks the tree: nothing missing, extra or linked
        if problems := verify(stage.model_dir, manifest, content=False):
            raise ArtifactCorrupt(f"artifact corrupt: {store.where(s.key)}: {problems[0]}")
        final = stage.commit()
    seconds = time.monotonic() - started
    log.info("fetched %s (%d files, %s) into %s in %.2fs", s.key, got.files, human(got.bytes), final, seconds)
    return {
        "result": "fetched",
        "key": s.key,
        "modelName": name,
        "modelSha256": manifest.model_sha256,
        "quantized": manifest.quantized,
        "files": got.files,
        "bytes": got.bytes,
        "retried": list(got.retried),
        "fromCache": len(cached.from_cache - set(got.retried)) if cached else 0,  # files served as the cache sent them
        "seconds": round(seconds, 3),
        "store": store.where(s.key),
    }
