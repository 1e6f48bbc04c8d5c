"""The artifact key: a stable hash of everything that decides an artifact's bytes (pure).

Same key means same intended bytes, which is what lets a revision be built once and every pod,
in any namespace, reuse it. So the key must change with every input that can change a byte of
the model directory the loader writes, and should not change with anything else (a retry
count, a timeout, where the repository is mounted), or equal models would build twice.

Decisions, each documented in docs/artifacts.md:
- The source is identified by its declared sha256 when there is one: the same bytes from two
  buckets share an artifact. Without a sha256 the key can only name the source: its URI as
  `display()` shows it (no userinfo, no query string: those carry credentials or expire), the
  user's version label and the caller's `scope` (the namespace and credentials Secret a pvc://
  claim or an s3:// endpoint is resolved in). If the bytes behind that URI change without a new
  version label, the old artifact is reused: declare a sha256 to make the key exact.
- The model name is part of the key: config.pbtxt carries `name`, and Triton refuses a model
  whose configured name differs from its directory. Two ModelDeployments share an artifact
  when they serve the same model under the same Triton model name (spec.model.name).
- Settings enter in the form that reaches the bytes: instance groups as rendered (a GPU count
  does not matter to a python backend), validation data only where it is read (int8 calibration,
  a TorchScript model's input shape), the agreement threshold only when a gate uses it.
- The builder's own version (modeldeploy.__version__ and ARTIFACT_FORMAT_VERSION) is part of
  it: a new release may convert or quantize differently, and its image pins the libraries
  (torch, onnxruntime) that do the work.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

from .. import __version__
from ..loader import uri
from ..loader.settings import LoaderSettings
from ..resources.triton_config import Backend, instance_groups

ARTIFACT_FORMAT_VERSION: Final = 1  # bump when the layout, the manifest or what a build writes changes
KEY_HEX: Final = 32  # 128 bits of sha256: collisions are not a practical concern
SLUG_MAX: Final = 30  # slug + "-" + 32 hex = 63: fits a Kubernetes label value
KEY_PATTERN: Final = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{SLUG_MAX - 1}}})-[0-9a-f]{{{KEY_HEX}}}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def _source(s: LoaderSettings, scope: str) -> dict[str, str]:
    """The model's identity: its sha256, else where it lives (see the module docstring)."""
    if s.sha256:
        return {"sha256": s.sha256}
    parsed = uri.parse(s.source_uri)
    return {"uri": parsed.display(), "version": s.model_version, "scope": scope}


def _validation(s: LoaderSettings, scope: str) -> dict[str, str] | None:
    """The validation data, when the build reads it: int8 calibration and gates, or the input
    shape of a TorchScript model that declares none. It has no sha256, so it is named by URI."""
    if not s.validation_uri:
        return None
    # tuning checks the chosen configuration's answers against the default's on it
    used = s.quantize == "int8" or s.tune is not None or (s.format == "torchscript" and not s.input_shapes)
    if not used:
        return None
    return {"uri": uri.parse(s.validation_uri).display(), "scope": scope}


def key_inputs(s: LoaderSettings, *, scope: str = "", device: str = "", hardware: str = "") -> dict[str, Any]:
    """Every input that decides the artifact's bytes, as plain JSON data (also kept in the manifest).

    `scope` names where a source without sha256 is resolved (e.g. "namespace/credentials-secret");
    `device` names the serving device class the int8 speed gate is measured on (e.g. a GPU
    product label), because an int8 model that is faster on one device may be slower on another.
    `hardware` names the hardware class the serving pods run on (GPUs, CPU and memory of the serving
    container, node selector); with tuning (MD_TUNE) it is in the key with the tuning settings, so a
    tuned config.pbtxt is reused only on the hardware it was measured on. Both are absent without
    tuning: untuned keys are unchanged.
    """
    backend = Backend.PYTHON if s.format == "python" else s.backend
    python_format = s.format == "python"
    int8 = s.quantize == "int8"
    batching = s.dynamic_batching
    inputs = {
        "artifactFormat": ARTIFACT_FORMAT_VERSION,
        "loaderVersion": __version__,
        "source": _source(s, scope),
        "format": s.format,
        "modelName": s.model_name,  # config.pbtxt's name (see the module docstring)
        "modelVersion": s.model_version,  # written into config.pbtxt's parameters
        "backend": backend.value,
        "maxBatchSize": s.max_batch_size,
        "dynamicBatching": None if batching is None else {
            "maxQueueDelayMicroseconds": batching.max_queue_delay_microseconds,
            "preferredBatchSizes": list(batching.preferred_batch_sizes),
        },
        "instanceGroups": [
            {"count": g.count, "kind": g.kind, "gpus": list(g.gpus)}
            for g in instance_groups(s.gpus, s.instances_per_gpu, backend)
        ],
        # a python model's generated config has no inputs, so no warm-up; ONNX configs do
        "warmup": None if python_format else s.warmup,
        "quantize": s.quantize,
        "minAgreement": s.min_agreement if int8 else None,
        "gateDevice": device if int8 else None,
        "validation": _validation(s, scope),
        "inputShapes": [
            {"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in s.input_shapes
        ] if s.format == "torchscript" else None,
        # written at the top of model.py (python-onnx runner, python models); never set in the images
        "runnerSysPath": list(s.runner_sys_path) if backend is not Backend.ONNXRUNTIME else None,
    }
    if s.tune is not None:
        inputs["tune"] = s.tune.to_json()
        inputs["tuneHardware"] = hardware
    return inputs


def canonical(inputs: dict[str, Any]) -> bytes:
    """The one byte string the key hashes: sorted keys, no whitespace, ASCII."""
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def slug(model_name: str) -> str:
    """A readable, label-safe prefix from the model name (lowercase, [a-z0-9-], at most SLUG_MAX)."""
    text = _NOT_SLUG.sub("-", model_name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return text or "model"


def key_from_inputs(inputs: dict[str, Any]) -> str:
    """`<slug>-<32 hex>`: the slug is only for people; the hash covers every input."""
    digest = hashlib.sha256(canonical(inputs)).hexdigest()[:KEY_HEX]
    return f"{slug(str(inputs.get('modelName', '')))}-{digest}"


def artifact_key(s: LoaderSettings, *, scope: str = "", device: str = "", hardware: str = "") -> str:
    """The artifact key of a loader run with settings `s` (see key_inputs for the arguments)."""
    return key_from_inputs(key_inputs(s, scope=scope, device=device, hardware=hardware))


def is_key(text: str) -> bool:
    """Whether `text` is shaped like a key (stores refuse anything else: it becomes a path)."""
    return bool(KEY_PATTERN.match(text))
