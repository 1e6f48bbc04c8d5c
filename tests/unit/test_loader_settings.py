"""The loader's inputs: environment variables (the pod's contract), flags overriding them, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldeploy.loader.errors import ConfigError
from modeldeploy.loader.settings import InputShape, from_sources, termination_log_path
from modeldeploy.resources.triton_config import Backend, DynamicBatching

BASE = {"MD_SOURCE_URI": "s3://models/digits/3/model.onnx", "MD_MODEL_NAME": "digits"}


def parse(env: dict[str, str], argv: list[str] | None = None):
    return from_sources(argv or [], {**BASE, **env})


def test_defaults() -> None:
    s = parse({})
    assert (s.format, s.max_batch_size, s.dynamic_batching, s.quantize) == ("onnx", 0, None, "none")
    assert (s.min_agreement, s.warmup, s.gpus, s.instances_per_gpu) == (0.99, True, 0, 1)
    assert s.backend is Backend.ONNXRUNTIME
    assert s.repository == Path("/models")
    assert s.termination_log == Path("/dev/termination-log")
    assert s.source_mount == Path("/source")


def test_the_operator_env_as_the_pod_builder_writes_it() -> None:
    s = parse({
        "MD_FORMAT": "torchscript", "MD_MODEL_VERSION": "3", "MD_MAX_BATCH_SIZE": "32",
        "MD_DYNAMIC_BATCHING": '{"maxQueueDelayMicroseconds": 200, "preferredBatchSizes": [8, 16]}',
        "MD_QUANTIZE": "int8", "MD_MIN_AGREEMENT": "0.98", "MD_WARMUP": "false", "MD_GPUS": "2",
        "MD_INSTANCES_PER_GPU": "3", "MD_BACKEND": "python-onnx", "MD_REPOSITORY": "/tmp/r",
        "MD_SHA256": "A" * 64, "MD_VALIDATION_URI": "s3://models/val.npz", "MD_RUNNER_SYS_PATH": "/a:/b",
        "MD_INPUT_SHAPES": '[{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]',
    })
    assert s.format == "torchscript" and s.model_version == "3" and s.max_batch_size == 32
    assert s.dynamic_batching == DynamicBatching(200, (8, 16))
    assert (s.quantize, s.min_agreement, s.warmup, s.gpus, s.instances_per_gpu) == ("int8", 0.98, False, 2, 3)
    assert s.backend is Backend.PYTHON_ONNX and s.repository == Path("/tmp/r")
    assert s.sha256 == "a" * 64  # normalised to lower case
    assert s.runner_sys_path == ("/a", "/b")
    assert s.input_shapes == (InputShape("x", "float32", (1, 8, 8)),)


def test_flags_override_env() -> None:
    s = parse({"MD_MAX_BATCH_SIZE": "4", "MD_FORMAT": "onnx"}, ["--max-batch-size", "16", "--format=pytorch-export"])
    assert s.max_batch_size == 16 and s.format == "pytorch-export"


def test_python_format_selects_the_python_backend() -> None:
    assert parse({"MD_FORMAT": "python", "MD_BACKEND": "onnxruntime"}).backend is Backend.PYTHON


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MD_SOURCE_URI": ""}, "MD_SOURCE_URI is required"),
        ({"MD_MODEL_NAME": "a/b"}, "MD_MODEL_NAME"),
        ({"MD_MODEL_NAME": ".."}, "MD_MODEL_NAME"),
        ({"MD_FORMAT": "tensorflow"}, "MD_FORMAT must be one of"),
        ({"MD_BACKEND": "tensorrt"}, "MD_BACKEND must be one of"),
        ({"MD_SHA256": "abc"}, "64 hex digits"),
        ({"MD_MAX_BATCH_SIZE": "-1"}, "at least 0"),
        ({"MD_MAX_BATCH_SIZE": "many"}, "must be an integer"),
        ({"MD_DYNAMIC_BATCHING": "{}"}, "needs MD_MAX_BATCH_SIZE > 0"),
        ({"MD_MAX_BATCH_SIZE": "8", "MD_DYNAMIC_BATCHING": "{not json"}, "not valid JSON"),
        ({"MD_MAX_BATCH_SIZE": "8", "MD_DYNAMIC_BATCHING": '{"maxDelay": 1}'}, "unknown keys"),
        ({"MD_MAX_BATCH_SIZE": "8", "MD_DYNAMIC_BATCHING": '{"preferredBatchSizes": [16]}'}, "<= MD_MAX_BATCH_SIZE"),
        ({"MD_QUANTIZE": "fp8"}, "MD_QUANTIZE"),
        ({"MD_QUANTIZE": "int8", "MD_FORMAT": "python"}, "applies to ONNX models"),
        ({"MD_MIN_AGREEMENT": "1.5"}, "between 0 and 1"),
        ({"MD_WARMUP": "maybe"}, "true or false"),
        ({"MD_INSTANCES_PER_GPU": "0"}, "at least 1"),
        ({"MD_INPUT_SHAPES": '[{"shape": [1]}]'}, "MD_INPUT_SHAPES"),
    ],
)
def test_refusals_name_the_input(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(env)


def test_unknown_flag_is_a_config_error_not_an_exit() -> None:
    with pytest.raises(ConfigError, match="invalid arguments"):
        parse({}, ["--no-such-flag"])


def test_termination_log_path_even_when_settings_are_broken() -> None:
    assert termination_log_path([], {}) == Path("/dev/termination-log")
    assert termination_log_path([], {"MD_TERMINATION_LOG": "/tmp/t"}) == Path("/tmp/t")
    assert termination_log_path(["--termination-log", "/x"], {"MD_TERMINATION_LOG": "/tmp/t"}) == Path("/x")
    assert termination_log_path(["--termination-log=/y"], {}) == Path("/y")
