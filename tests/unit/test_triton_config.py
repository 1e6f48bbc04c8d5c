"""config.pbtxt generation: golden files for each backend, and the settings Triton would refuse.

Regenerate the goldens after an intended change with MD_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from modeldeploy.resources.triton_config import (
    Backend,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    instance_groups,
    render_config,
    triton_dtype,
)

GOLDEN = Path(__file__).parent / "golden"
IMAGE = TensorSpec("x", "TYPE_FP32", (1, 8, 8))
LOGITS = TensorSpec("logits", "TYPE_FP32", (10,))

CASES = {
    # NVIDIA image: native ONNX Runtime backend, two GPUs with two instances each, dynamic batching.
    "gpu_onnxruntime": ModelConfig(
        name="digits",
        backend=Backend.ONNXRUNTIME,
        inputs=(IMAGE,),
        outputs=(LOGITS,),
        max_batch_size=32,
        dynamic_batching=DynamicBatching(200, (8, 16)),
        instance_groups=instance_groups(2, 2, Backend.ONNXRUNTIME),
        parameters=(("modeldeploy.version", "3"),),
    ),
    # CPU image: the python backend runs the ONNX runner; several inputs, a per-sample scalar output.
    "cpu_python_onnx": ModelConfig(
        name="ranker",
        backend=Backend.PYTHON_ONNX,
        inputs=(TensorSpec("features", "TYPE_FP32", (-1, 16)), TensorSpec("ids", "TYPE_INT64", (4,))),
        outputs=(TensorSpec("score", "TYPE_FP32", ()),),
        max_batch_size=8,
        dynamic_batching=DynamicBatching(0, ()),
        instance_groups=instance_groups(1, 2, Backend.PYTHON_ONNX),
        parameters=(("modeldeploy.quantization", "int8"), ("modeldeploy.version", "v1")),
    ),
    # No batching: the batch axis is part of the dims; warm-up uses concrete shapes.
    "no_batching": ModelConfig(
        name="fixed",
        backend=Backend.ONNXRUNTIME,
        inputs=(TensorSpec("x", "TYPE_FP32", (-1, 3)),),
        outputs=(TensorSpec("y", "TYPE_FP32", (-1,)),),
        max_batch_size=0,
        instance_groups=instance_groups(0, 1, Backend.ONNXRUNTIME),
    ),
    # A user's python model: inputs come from their model.py, so no warm-up can be generated.
    "python_user": ModelConfig(name="custom", backend=Backend.PYTHON, max_batch_size=4, warmup=True),
    "warmup_off": ModelConfig(
        name="digits", backend=Backend.PYTHON_ONNX, inputs=(IMAGE,), outputs=(LOGITS,), max_batch_size=16, warmup=False
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    text = render_config(CASES[case])
    path = GOLDEN / f"{case}.pbtxt"
    if os.environ.get("MD_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{case}: config changed; if intended, rerun with MD_UPDATE_GOLDEN=1"


def test_render_is_pure_and_deterministic() -> None:
    cfg = CASES["gpu_onnxruntime"]
    assert render_config(cfg) == render_config(cfg)


def test_the_backend_is_a_single_switch() -> None:
    runner_cfg = CASES["warmup_off"]
    native = render_config(dataclasses.replace(runner_cfg, backend=Backend.ONNXRUNTIME))
    diff = set(native.splitlines()) ^ set(render_config(runner_cfg).splitlines())
    assert diff == {'backend: "onnxruntime"', 'default_model_filename: "model.onnx"', 'backend: "python"'}


def test_names_are_escaped() -> None:
    cfg = ModelConfig(name="m", backend=Backend.ONNXRUNTIME, inputs=(TensorSpec('in"put\\', "TYPE_FP32", (2,)),),
                      outputs=(LOGITS,))
    assert 'name: "in\\"put\\\\"' in render_config(cfg)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ModelConfig("m", Backend.ONNXRUNTIME, (IMAGE,), (LOGITS,), 0, DynamicBatching(100)), "needs max_batch_size"),
        (ModelConfig("m", Backend.ONNXRUNTIME, (IMAGE,), (LOGITS,), 8, DynamicBatching(0, (16,))), "outside 1..8"),
        (ModelConfig("m", Backend.ONNXRUNTIME, (), (LOGITS,), 8), "at least one input"),
        (ModelConfig("m", Backend.PYTHON_ONNX, (IMAGE,), (LOGITS,), -1), "must not be negative"),
        (ModelConfig("a/b", Backend.ONNXRUNTIME, (IMAGE,), (LOGITS,)), "invalid model name"),
        (ModelConfig("m", Backend.ONNXRUNTIME, (IMAGE,), (LOGITS,),
                     instance_groups=(InstanceGroup(1, "KIND_CPU", (0,)),)), "cannot name GPUs"),
        (ModelConfig("m", Backend.ONNXRUNTIME, (IMAGE,), (LOGITS,), instance_groups=(InstanceGroup(1, "KIND_TPU"),)),
         "unknown instance group kind"),
    ],
)
def test_refuses_what_triton_would_refuse(cfg: ModelConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_config(cfg)


@pytest.mark.parametrize(
    ("gpus", "per_gpu", "backend", "want"),
    [
        (0, 1, Backend.ONNXRUNTIME, (InstanceGroup(1, "KIND_CPU"),)),
        (0, 3, Backend.ONNXRUNTIME, (InstanceGroup(3, "KIND_CPU"),)),
        (1, 1, Backend.ONNXRUNTIME, (InstanceGroup(1, "KIND_GPU", (0,)),)),
        (4, 2, Backend.ONNXRUNTIME, (InstanceGroup(2, "KIND_GPU", (0, 1, 2, 3)),)),
        (2, 2, Backend.PYTHON_ONNX, (InstanceGroup(2, "KIND_CPU"),)),  # the CPU image cannot use GPUs
    ],
)
def test_instance_groups(gpus: int, per_gpu: int, backend: Backend, want: tuple[InstanceGroup, ...]) -> None:
    assert instance_groups(gpus, per_gpu, backend) == want


def test_instance_groups_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        instance_groups(1, 0, Backend.ONNXRUNTIME)
    with pytest.raises(ValueError):
        instance_groups(-1, 1, Backend.ONNXRUNTIME)


def test_dtypes() -> None:
    assert triton_dtype("float32") == "TYPE_FP32"
    assert triton_dtype("int64") == "TYPE_INT64"
    assert triton_dtype("object") == "TYPE_STRING"
    with pytest.raises(ValueError, match="complex64"):
        triton_dtype("complex64")
