"""Triton's config.pbtxt for one model, rendered from plain data (pure).

One function, `render_config`, turns model metadata and serving settings into the text Triton
reads. The backend is a single switch: NVIDIA's image runs ONNX natively (`onnxruntime`), the
CPU image runs it through a python-backend runner (`python-onnx`); a user's own python model is
`python`. Everything else (batching, instances, warm-up) is the same for all of them, so the
CPU tests exercise the same config the GPU image serves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Backend(StrEnum):
    """Which Triton backend serves the model."""

    ONNXRUNTIME = "onnxruntime"  # native ONNX Runtime backend (NVIDIA's tritonserver image)
    PYTHON_ONNX = "python-onnx"  # python backend running model.onnx with onnxruntime (CPU image)
    PYTHON = "python"  # the user's own Triton python model


ACCELERATORS: Final = ("tensorrt", "tensorrt-fp16")

# numpy dtype names -> Triton data types (the ones ONNX and the python backend share).
NUMPY_TO_TRITON: Final[dict[str, str]] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "object": "TYPE_STRING",
    "bytes": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` exclude the batch dimension when batching; -1 = variable."""

    name: str
    data_type: str  # Triton name, e.g. TYPE_FP32
    dims: tuple[int, ...]


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher: how long a request may wait for others, and batch sizes to aim for."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class InstanceGroup:
    """`count` model instances on each GPU in `gpus` (KIND_GPU), or `count` on the CPU."""

    count: int = 1
    kind: str = "KIND_CPU"  # KIND_CPU | KIND_GPU
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """Everything config.pbtxt says about one model."""

    name: str
    backend: Backend
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    warmup: bool = True
    parameters: tuple[tuple[str, str], ...] = field(default=())  # sorted (key, value) pairs
    accelerator: str = ""  # "", "tensorrt" or "tensorrt-fp16": onnxruntime's TensorRT provider on a GPU


def triton_dtype(numpy_name: str) -> str:
    """Triton's data type for a numpy dtype name; ValueError for types Triton cannot carry."""
    try:
        return NUMPY_TO_TRITON[numpy_name]
    except KeyError:
        raise ValueError(f"data type {numpy_name!r} has no Triton equivalent") from None


def instance_groups(gpus: int, instances_per_gpu: int, backend: Backend) -> tuple[InstanceGroup, ...]:
    """Instances for a pod with `gpus` GPUs. Inside the container the GPUs are always 0..gpus-1.

    The python backends in the CPU image cannot place work on a GPU, so they always get
    KIND_CPU; `instances_per_gpu` is then the number of CPU instances.
    """
    if instances_per_gpu < 1:
        raise ValueError(f"instances per GPU must be at least 1, got {instances_per_gpu}")
    if gpus < 0:
        raise ValueError(f"gpus must not be negative, got {gpus}")
    if gpus == 0 or backend is not Backend.ONNXRUNTIME:
        return (InstanceGroup(count=instances_per_gpu, kind="KIND_CPU"),)
    return (InstanceGroup(count=instances_per_gpu, kind="KIND_GPU", gpus=tuple(range(gpus))),)


def _q(text: str) -> str:
    """A protobuf text-format string literal (JSON escaping is a valid subset for ASCII)."""
    return json.dumps(text, ensure_ascii=True)


def _ints(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _validate(cfg: ModelConfig) -> None:
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ValueError(f"invalid model name {cfg.name!r}")
    if cfg.max_batch_size < 0:
        raise ValueError(f"max_batch_size must not be negative, got {cfg.max_batch_size}")
    if cfg.dynamic_batching is not None:
        if cfg.max_batch_size == 0:
            raise ValueError("dynamic batching needs max_batch_size > 0")
        too_big = [b for b in cfg.dynamic_batching.preferred_batch_sizes if not 0 < b <= cfg.max_batch_size]
        if too_big:
            raise ValueError(f"preferred batch sizes {too_big} outside 1..{cfg.max_batch_size}")
        if cfg.dynamic_batching.max_queue_delay_microseconds < 0:
            raise ValueError("max_queue_delay_microseconds must not be negative")
    if cfg.backend is not Backend.PYTHON and not (cfg.inputs and cfg.outputs):
        raise ValueError("an ONNX model needs at least one input and one output")
    for g in cfg.instance_groups:
        if g.kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(f"unknown instance group kind {g.kind!r}")
        if g.kind == "KIND_CPU" and g.gpus:
            raise ValueError("a KIND_CPU instance group cannot name GPUs")
    if cfg.accelerator:
        if cfg.accelerator not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {cfg.accelerator!r}")
        if cfg.backend is not Backend.ONNXRUNTIME or not any(g.kind == "KIND_GPU" for g in cfg.instance_groups):
            raise ValueError("an accelerator needs the onnxruntime backend on a GPU")


def _tensor(t: TensorSpec) -> list[str]:
    lines = ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}"]
    if t.dims:
        lines.append(f"    dims: {_ints(t.dims)}")
    else:  # a scalar per sample: Triton wants dims [1] and a reshape to the empty shape
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    lines.append("  }")
    return lines


def _tensors(key: str, tensors: Sequence[TensorSpec]) -> list[str]:
    if not tensors:
        return []
    body: list[str] = []
    for i, t in enumerate(tensors):
        block = _tensor(t)
        if i < len(tensors) - 1:
            block[-1] += ","
        body += block
    return [f"{key} [", *body, "]"]


def _warmup_sample(batch_size: int, cfg: ModelConfig) -> list[str]:
    lines = ["  {", f"    name: {_q(f'random_batch_{batch_size}')}", f"    batch_size: {batch_size}"]
    for t in cfg.inputs:
        dims = [1 if d < 0 else d for d in t.dims] or [1]  # warm-up needs concrete shapes
        data = "zero_data: true" if t.data_type == "TYPE_STRING" else "random_data: true"
        lines += [
            "    inputs {",
            f"      key: {_q(t.name)}",
            "      value {",
            f"        data_type: {t.data_type}",
            f"        dims: {_ints(dims)}",
            f"        {data}",
            "      }",
            "    }",
        ]
    lines.append("  }")
    return lines


def _warmup(cfg: ModelConfig) -> list[str]:
    """Warm-up requests Triton answers before it reports ready: batch 1 and the largest batch."""
    if not cfg.warmup or not cfg.inputs:
        return []
    sizes = [1] if cfg.max_batch_size <= 1 else [1, cfg.max_batch_size]
    body: list[str] = []
    for i, size in enumerate(sizes):
        block = _warmup_sample(size, cfg)
        if i < len(sizes) - 1:
            block[-1] += ","
        body += block
    return ["model_warmup [", *body, "]"]


def _accelerator(cfg: ModelConfig) -> list[str]:
    """onnxruntime's TensorRT execution provider (NVIDIA's image): TensorRT engines built at load
    time, in FP16 for `tensorrt-fp16`. Documented in Triton's onnxruntime backend (Model Config)."""
    if not cfg.accelerator:
        return []
    params = ['      parameters { key: "max_workspace_size_bytes" value: "1073741824" }']
    if cfg.accelerator == "tensorrt-fp16":
        params.insert(0, '      parameters { key: "precision_mode" value: "FP16" }')
    return ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [ {",
            '      name: "tensorrt"', *params, "    } ]", "  }", "}"]


def _backend_lines(backend: Backend) -> list[str]:
    if backend is Backend.ONNXRUNTIME:
        return ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    return ['backend: "python"']


def render_config(cfg: ModelConfig) -> str:
    """config.pbtxt text for `cfg`; ValueError for settings Triton would refuse to load."""
    _validate(cfg)
    lines = [
        "# Generated by modeldeploy's model-loader; edit the ModelDeployment, not this file.",
        f"name: {_q(cfg.name)}",
        *_backend_lines(cfg.backend),
        f"max_batch_size: {cfg.max_batch_size}",
        *_tensors("input", cfg.inputs),
        *_tensors("output", cfg.outputs),
    ]
    if db := cfg.dynamic_batching:
        lines.append("dynamic_batching {")
        if db.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_ints(db.preferred_batch_sizes)}")
        lines += [f"  max_queue_delay_microseconds: {db.max_queue_delay_microseconds}", "}"]
    lines.append("instance_group [")
    for i, g in enumerate(cfg.instance_groups):
        lines += ["  {", f"    count: {g.count}", f"    kind: {g.kind}"]
        if g.gpus:
            lines.append(f"    gpus: {_ints(g.gpus)}")
        lines.append("  }," if i < len(cfg.instance_groups) - 1 else "  }")
    lines.append("]")
    for key, value in sorted(cfg.parameters):
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    lines += _accelerator(cfg)
    lines += _warmup(cfg)
    return "\n".join(lines) + "\n"
