"""`python -m modeldeploy.artifact build`: one build per key, or none when the store has it.

The build Job's container. Inputs are the loader's (MD_* of docs/loader-contract.md) plus the
store (MD_ARTIFACT_STORE, credentials in MD_STORE_AWS_*), and optionally the key the operator
computed (MD_ARTIFACT_KEY: a mismatch means operator and builder are different versions, and
building under either key would be wrong), the source scope and the gate's device.

1. key = artifact_key(settings)
2. the store has a manifest for it and every file checks out (downloaded and hashed: this Job
   only runs when the operator did not find the artifact, or a pod reported it corrupt) ->
   "reused", nothing converted
3. else: a bad copy's manifest is deleted first (readers then see "not built", not a corrupt
   artifact), the loader's pipeline writes the model directory, the manifest is computed, and
   transfer.publish uploads files, then the manifest.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from .. import timefmt
from ..loader import pipeline
from ..loader.errors import ConfigError
from ..loader.repository import STAGING_PREFIX
from ..loader.settings import LoaderSettings
from .errors import ArtifactCorrupt, ManifestError
from .key import key_from_inputs, key_inputs
from .manifest import Gates, Manifest, manifest_for, verify
from .options import BuildOptions
from .report import log
from .store import ArtifactStore, open_store
from .transfer import download_artifact, parse_manifest, publish

TOOLS: Final = ("onnxruntime", "onnx", "torch", "onnxscript", "numpy")


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that converted and quantized (for the manifest, not the key)."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def existing(store: ArtifactStore, key: str, scratch: Path) -> tuple[Manifest | None, str]:
    """The store's artifact for `key` if it is complete and every byte checks out; else None and
    why it does not (empty when there is no manifest at all, i.e. not built)."""
    data = store.read_manifest(key)
    if data is None:
        return None, ""
    try:
        manifest = parse_manifest(data, key)
        download_artifact(store, key, manifest, scratch)
    except (ManifestError, ArtifactCorrupt) as e:
        return None, str(e)
    if problems := verify(scratch, manifest, content=False):
        return None, problems[0]
    return manifest, ""


def result(kind: str, manifest: Manifest, store: ArtifactStore, seconds: float, uploaded: int = 0) -> dict[str, Any]:
    """What the operator records in status (and nothing secret)."""
    return {
        "result": kind,
        "key": manifest.key,
        "modelName": manifest.model_name,
        "modelSha256": manifest.model_sha256,
        "quantized": manifest.quantized,
        "gates": None if manifest.gates is None else manifest.gates.to_json(),
        "buildSeconds": round(manifest.build_seconds, 3),
        "builtAt": manifest.built_at,
        "files": len(manifest.files),
        "bytes": manifest.total_bytes,
        "uploaded": uploaded,
        "seconds": round(seconds, 3),
        "store": store.where(manifest.key),
    } | tuning_summary(manifest)


def tuning_summary(manifest: Manifest) -> dict[str, Any]:
    """{"tuning": summary} of a tuned artifact (not every candidate: the termination message holds
    4 KiB, the manifest keeps them all); {} otherwise, so untuned results are as before."""
    if manifest.tuning is None:
        return {}
    return {"tuning": {k: v for k, v in manifest.tuning.items() if k != "measured"}}


def run(
    opts: BuildOptions, settings: LoaderSettings, env: Mapping[str, str], store: ArtifactStore | None = None
) -> dict[str, Any]:
    """Reuse or build the artifact of `settings`; the JSON-able result. Raises a LoaderError on failure."""
    started = time.monotonic()
    inputs = key_inputs(settings, scope=opts.scope, device=opts.device, hardware=opts.hardware)
    key = key_from_inputs(inputs)
    if opts.expected_key and opts.expected_key != key:
        raise ConfigError(f"artifact key mismatch: the operator expects {opts.expected_key}, this builder computes "
                          f"{key} (operator and build image are different versions?)")
    store = store or open_store(opts.store, env, attempts=settings.fetch_attempts, timeout_s=settings.fetch_timeout_s)
    settings.repository.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}check-", dir=settings.repository))
    try:
        found, problem = existing(store, key, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if found is not None:
        log.info("artifact %s is in the store and checks out: reused, nothing built", key)
        return result("reused", found, store, time.monotonic() - started)
    if problem:
        log.warning("artifact %s in the store is bad (%s): rebuilding it", key, problem)
        store.delete_manifest(key)
    else:
        log.info("artifact %s is not built: building it", key)

    t0 = time.monotonic()
    built = pipeline.run(settings, env)
    report = built.quantization
    manifest = manifest_for(
        built.model_dir,
        key=key,
        model_name=settings.model_name,
        key_inputs=inputs,
        gates=None if report is None else Gates.from_report(report),
        quantized=report is not None,
        build_seconds=time.monotonic() - t0,
        built_at=timefmt.rfc3339(time.time()) or "",
        tools=tool_versions(),
        tuning=built.tuning,
    )
    published = publish(store, key, built.model_dir, manifest)
    log.info("artifact %s built in %.1fs and published to %s (%d files uploaded)", key, manifest.build_seconds,
             store.where(key), published.uploaded)
    return result("built", published.manifest, store, time.monotonic() - started, published.uploaded)
