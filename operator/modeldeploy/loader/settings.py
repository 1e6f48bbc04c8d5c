"""The loader's inputs: MD_* environment variables (docs/loader-contract.md), overridden by flags.

Parsed once into a frozen LoaderSettings so every later step works with checked, typed values and
a bad input is refused before anything is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from ..resources.triton_config import Backend, DynamicBatching
from ..tuning import settings as tuning_settings
from ..tuning.settings import TuneSettings
from .errors import ConfigError
from .limits import DEFAULT_MAX_DOWNLOAD_BYTES

FORMATS: Final = ("onnx", "torchscript", "pytorch-export", "python")
QUANTIZE: Final = ("none", "int8")
ONNX_BACKENDS: Final = (Backend.ONNXRUNTIME.value, Backend.PYTHON_ONNX.value)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


@dataclass(frozen=True)
class InputShape:
    """An input's name, numpy dtype and per-sample shape, for formats that do not record them."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GateTarget:
    """Where the gates run: Triton's HTTP URL and its model repository (as the builder sees it)."""

    url: str
    repository: Path


def gate_target(url: str, repository: str) -> GateTarget | None:
    """MD_GATE_TRITON_URL and MD_GATE_REPOSITORY: both (time through Triton) or neither (onnxruntime)."""
    if not url and not repository:
        return None
    if not url or not repository:
        raise ConfigError("MD_GATE_TRITON_URL and MD_GATE_REPOSITORY go together: set both or neither")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname or parsed.path.strip("/") or parsed.query:
        raise ConfigError(f"MD_GATE_TRITON_URL must be http://HOST:PORT, got {url!r}")
    if not repository.startswith("/"):
        raise ConfigError(f"MD_GATE_REPOSITORY must be an absolute path, got {repository!r}")
    return GateTarget(url=url.rstrip("/"), repository=Path(repository))


@dataclass(frozen=True)
class LoaderSettings:
    """Everything one loader run needs, validated."""

    source_uri: str
    model_name: str
    format: str = "onnx"
    model_version: str = ""
    sha256: str = ""
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    quantize: str = "none"
    min_agreement: float = 0.99
    validation_uri: str = ""
    warmup: bool = True
    gpus: int = 0
    instances_per_gpu: int = 1
    backend: Backend = Backend.ONNXRUNTIME
    repository: Path = Path("/models")
    termination_log: Path = Path("/dev/termination-log")
    source_mount: Path = Path("/source")
    runner_sys_path: tuple[str, ...] = ()
    input_shapes: tuple[InputShape, ...] = ()
    fetch_attempts: int = 5
    fetch_timeout_s: float = 60.0
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    gate: GateTarget | None = None  # the build Job's Triton for the int8 gates; None: onnxruntime here
    tune: TuneSettings | None = None  # deploy-time tuning through that Triton (the build Job only)


# flag name -> (environment variable, help)
_OPTIONS: Final[dict[str, tuple[str, str]]] = {
    "source-uri": ("MD_SOURCE_URI", "s3://, gs://, http(s)://, pvc://CLAIM/PATH or file:// URI of the model"),
    "format": ("MD_FORMAT", "onnx | torchscript | pytorch-export | python"),
    "model-name": ("MD_MODEL_NAME", "Triton model name (the repository's directory)"),
    "model-version": ("MD_MODEL_VERSION", "the user's version label (informational)"),
    "sha256": ("MD_SHA256", "expected SHA-256 (hex) of the fetched file"),
    "max-batch-size": ("MD_MAX_BATCH_SIZE", "0 = no batch dimension"),
    "dynamic-batching": ("MD_DYNAMIC_BATCHING", 'JSON {"maxQueueDelayMicroseconds": N, "preferredBatchSizes": [..]}'),
    "quantize": ("MD_QUANTIZE", "none | int8 (accuracy- and speed-gated)"),
    "min-agreement": ("MD_MIN_AGREEMENT", "minimum top-1 agreement of the int8 model with fp32 (0-1)"),
    "validation-uri": ("MD_VALIDATION_URI", "optional .npz with x (and y) used to check int8 and conversions"),
    "warmup": ("MD_WARMUP", "true | false: write model_warmup into config.pbtxt"),
    "gpus": ("MD_GPUS", "GPUs of the pod; 0 = CPU"),
    "instances-per-gpu": ("MD_INSTANCES_PER_GPU", "model instances per GPU (or on the CPU)"),
    "backend": ("MD_BACKEND", "onnxruntime (NVIDIA image) | python-onnx (CPU image)"),
    "repository": ("MD_REPOSITORY", "model repository root to write"),
    "termination-log": ("MD_TERMINATION_LOG", "where the one-line failure reason goes"),
    "source-mount": ("MD_SOURCE_MOUNT", "where a pvc:// source's claim is mounted"),
    "runner-sys-path": ("MD_RUNNER_SYS_PATH", "sys.path entries (os.pathsep-separated) put first in model.py"),
    "input-shapes": ("MD_INPUT_SHAPES", 'TorchScript only: JSON [{"name": "x", "dtype": "float32", "shape": [1, 8]}]'),
    "fetch-attempts": ("MD_FETCH_ATTEMPTS", "tries per download on transient errors"),
    "fetch-timeout": ("MD_FETCH_TIMEOUT_SECONDS", "socket timeout per download attempt"),
    "max-download-bytes": ("MD_MAX_DOWNLOAD_BYTES", "most bytes one run fetches (model + validation data), "
                           "and most an archive may unpack to"),
    "gate-triton-url": ("MD_GATE_TRITON_URL", "int8 gates through this Triton (the build Job's sidecar), "
                        "http://HOST:PORT; unset: onnxruntime on this CPU"),
    "gate-repository": ("MD_GATE_REPOSITORY", "that Triton's model repository, as this container sees it"),
    "tune": ("MD_TUNE", 'JSON {"objective", "maxP99Ms", "budgetSeconds", "onBoundMiss", "concurrency", "cpus"}: '
             "tune config.pbtxt through the build's Triton (docs/tuning.md)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError, so a bad flag also ends in a termination message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"invalid arguments: {message}")


def parser() -> argparse.ArgumentParser:
    """Flags mirror the environment variables; a flag wins over its variable."""
    p = _Parser(
        prog="python -m modeldeploy.loader",
        description="Write a Triton model repository for one model (the model-loader init container).",
    )
    for flag, (env, text) in _OPTIONS.items():
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), default=None, help=f"{text} [${env}]")
    return p


def _int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(name: str, raw: str, choices: Sequence[str]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def parse_dynamic_batching(raw: str) -> DynamicBatching | None:
    """MD_DYNAMIC_BATCHING's JSON; empty means no dynamic batcher."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        unknown = set(data) - {"maxQueueDelayMicroseconds", "preferredBatchSizes"}
        if unknown:
            raise TypeError(f"unknown keys {sorted(unknown)}")
        delay = int(data.get("maxQueueDelayMicroseconds", 0))
        sizes = tuple(int(s) for s in data.get("preferredBatchSizes", []) or [])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"MD_DYNAMIC_BATCHING is not valid JSON settings: {e}") from None
    if delay < 0 or any(s < 1 for s in sizes):
        raise ConfigError("MD_DYNAMIC_BATCHING: delay must be >= 0 and batch sizes >= 1")
    return DynamicBatching(max_queue_delay_microseconds=delay, preferred_batch_sizes=sizes)


def parse_input_shapes(raw: str) -> tuple[InputShape, ...]:
    """MD_INPUT_SHAPES's JSON list of {name, dtype, shape} (shape without the batch dimension)."""
    if not raw.strip():
        return ()
    try:
        items = json.loads(raw)
        shapes = tuple(
            InputShape(str(i["name"]), str(i.get("dtype", "float32")), tuple(int(d) for d in i["shape"])) for i in items
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"MD_INPUT_SHAPES is not a JSON list of {{name, dtype, shape}}: {e}") from None
    return shapes


def parse_tune(raw: str, fmt: str, max_batch: int) -> TuneSettings | None:
    """MD_TUNE's JSON (tuning/settings.py); empty: no tuning."""
    try:
        tune = tuning_settings.parse(raw)
    except ValueError as e:
        raise ConfigError(f"MD_TUNE: {e}") from None
    if tune is not None and fmt == "python":
        raise ConfigError("MD_TUNE applies to ONNX models (the loader writes their config.pbtxt), not to format python")
    if tune is not None and max_batch < 1:
        raise ConfigError("MD_TUNE needs MD_MAX_BATCH_SIZE >= 1 (tuning batches single-sample requests)")
    return tune


def from_sources(argv: Sequence[str] | None, env: Mapping[str, str]) -> LoaderSettings:
    """Settings from flags (first) and environment variables; ConfigError names the bad input."""
    args = vars(parser().parse_args(argv))
    raw: dict[str, str] = {}
    for flag, (var, _) in _OPTIONS.items():
        value = args[flag.replace("-", "_")]
        if value is None:
            value = env.get(var, "")
        raw[flag] = value.strip() if flag != "source-uri" else value

    d = LoaderSettings(source_uri="", model_name="")
    if not raw["source-uri"].strip():
        raise ConfigError("MD_SOURCE_URI is required")
    name = raw["model-name"]
    if not _MODEL_NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"MD_MODEL_NAME must be 1-200 of [A-Za-z0-9_.-], got {name!r}")
    sha = raw["sha256"].lower()
    if sha and not _SHA256.match(sha):
        raise ConfigError("MD_SHA256 must be 64 hex digits")
    fmt = _choice("MD_FORMAT", raw["format"] or d.format, FORMATS)
    backend = Backend(_choice("MD_BACKEND", raw["backend"] or d.backend.value, ONNX_BACKENDS))
    min_agreement = _float("MD_MIN_AGREEMENT", raw["min-agreement"]) if raw["min-agreement"] else d.min_agreement
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"MD_MIN_AGREEMENT must be between 0 and 1, got {min_agreement}")
    max_batch = _int("MD_MAX_BATCH_SIZE", raw["max-batch-size"], 0) if raw["max-batch-size"] else 0
    batching = parse_dynamic_batching(raw["dynamic-batching"])
    if batching is not None and max_batch == 0:
        raise ConfigError("MD_DYNAMIC_BATCHING needs MD_MAX_BATCH_SIZE > 0")
    if batching is not None and any(s > max_batch for s in batching.preferred_batch_sizes):
        raise ConfigError(f"MD_DYNAMIC_BATCHING: preferred batch sizes must be <= MD_MAX_BATCH_SIZE ({max_batch})")
    quantize = _choice("MD_QUANTIZE", raw["quantize"] or d.quantize, QUANTIZE)
    if quantize == "int8" and fmt == "python":
        raise ConfigError("MD_QUANTIZE=int8 applies to ONNX models, not to format python")
    tune = parse_tune(raw["tune"], fmt, max_batch)
    gate = gate_target(raw["gate-triton-url"].strip(), raw["gate-repository"].strip())
    if tune is not None and gate is None:
        raise ConfigError("MD_TUNE needs the build's Triton: set MD_GATE_TRITON_URL and MD_GATE_REPOSITORY")
    return LoaderSettings(
        source_uri=raw["source-uri"].strip(),
        model_name=name,
        format=fmt,
        model_version=raw["model-version"],
        sha256=sha,
        max_batch_size=max_batch,
        dynamic_batching=batching,
        quantize=quantize,
        min_agreement=min_agreement,
        validation_uri=raw["validation-uri"],
        warmup=_bool("MD_WARMUP", raw["warmup"]) if raw["warmup"] else d.warmup,
        gpus=_int("MD_GPUS", raw["gpus"], 0) if raw["gpus"] else d.gpus,
        instances_per_gpu=_int("MD_INSTANCES_PER_GPU", raw["instances-per-gpu"], 1)
        if raw["instances-per-gpu"] else d.instances_per_gpu,
        backend=Backend.PYTHON if fmt == "python" else backend,
        repository=Path(raw["repository"] or d.repository),
        termination_log=Path(raw["termination-log"] or d.termination_log),
        source_mount=Path(raw["source-mount"] or d.source_mount),
        runner_sys_path=tuple(p for p in raw["runner-sys-path"].split(os.pathsep) if p),
        input_shapes=parse_input_shapes(raw["input-shapes"]),
        fetch_attempts=_int("MD_FETCH_ATTEMPTS", raw["fetch-attempts"], 1)
        if raw["fetch-attempts"] else d.fetch_attempts,
        fetch_timeout_s=_float("MD_FETCH_TIMEOUT_SECONDS", raw["fetch-timeout"])
        if raw["fetch-timeout"] else d.fetch_timeout_s,
        max_download_bytes=_int("MD_MAX_DOWNLOAD_BYTES", raw["max-download-bytes"], 1)
        if raw["max-download-bytes"] else d.max_download_bytes,
        gate=gate,
        tune=tune,
    )


def termination_log_path(argv: Sequence[str] | None, env: Mapping[str, str]) -> Path:
    """Where to write the failure reason, even when the rest of the settings are invalid."""
    args = argv or []
    for i, a in enumerate(args):
        if a.startswith("--termination-log="):
            return Path(a.split("=", 1)[1])
        if a == "--termination-log" and i + 1 < len(args):
            return Path(args[i + 1])
    return Path(env.get("MD_TERMINATION_LOG") or "/dev/termination-log")
