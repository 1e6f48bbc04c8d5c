"""The artifact key: every input that changes an artifact's bytes changes the key; nothing else does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from modeldeploy.artifact import key as keymod
from modeldeploy.artifact.key import KEY_PATTERN, artifact_key, canonical, is_key, key_inputs, slug
from modeldeploy.loader.settings import InputShape, LoaderSettings, from_sources
from modeldeploy.resources.triton_config import Backend, DynamicBatching

SHA = "a" * 64
BASE_ENV = {"MD_SOURCE_URI": "s3://models/digits/3/model.onnx", "MD_MODEL_NAME": "digits", "MD_SHA256": SHA,
            "MD_MAX_BATCH_SIZE": "8"}


def base(**env: str) -> LoaderSettings:
    """Settings parsed the way the build Job parses them."""
    return from_sources([], {**BASE_ENV, **env})


INT8 = base(MD_QUANTIZE="int8", MD_VALIDATION_URI="s3://models/val.npz")
TORCHSCRIPT = base(MD_FORMAT="torchscript", MD_VALIDATION_URI="s3://models/val.npz")
NO_SHA = base(MD_SHA256="")
PYTHON_ONNX = base(MD_BACKEND="python-onnx")
PYTHON = base(MD_FORMAT="python")

# (what, settings before, settings after): each pair must differ in key
CHANGES = [
    ("source sha256", base(), base(MD_SHA256="b" * 64)),
    ("format", base(), base(MD_FORMAT="pytorch-export")),
    ("model name (config.pbtxt name)", base(), base(MD_MODEL_NAME="digits2")),
    ("model version (config.pbtxt parameter)", base(), base(MD_MODEL_VERSION="4")),
    ("max batch size", base(), base(MD_MAX_BATCH_SIZE="16")),
    ("dynamic batching", base(), base(MD_DYNAMIC_BATCHING='{"maxQueueDelayMicroseconds": 100}')),
    ("dynamic batching sizes", base(MD_DYNAMIC_BATCHING='{"preferredBatchSizes": [4]}'),
     base(MD_DYNAMIC_BATCHING='{"preferredBatchSizes": [8]}')),
    ("quantize", base(), base(MD_QUANTIZE="int8")),
    ("min agreement of an int8 gate", INT8, replace(INT8, min_agreement=0.95)),
    ("int8 calibration data", INT8, replace(INT8, validation_uri="s3://models/val2.npz")),
    ("torchscript shape data", TORCHSCRIPT, replace(TORCHSCRIPT, validation_uri="s3://models/val2.npz")),
    ("torchscript input shapes", TORCHSCRIPT, replace(TORCHSCRIPT, input_shapes=(InputShape("x", "float32", (4,)),))),
    ("warm-up", base(), base(MD_WARMUP="false")),
    ("GPUs (onnxruntime instance groups)", base(), base(MD_GPUS="2")),
    ("instances", base(), base(MD_INSTANCES_PER_GPU="2")),
    ("backend", base(), PYTHON_ONNX),
    ("runner sys.path in model.py", PYTHON_ONNX, base(MD_BACKEND="python-onnx", MD_RUNNER_SYS_PATH="/opt/x")),
    ("python model sys.path", PYTHON, base(MD_FORMAT="python", MD_RUNNER_SYS_PATH="/opt/x")),
    ("uri without sha256", NO_SHA, base(MD_SHA256="", MD_SOURCE_URI="s3://models/digits/4/model.onnx")),
    ("version without sha256", NO_SHA, base(MD_SHA256="", MD_MODEL_VERSION="4")),
]


@pytest.mark.parametrize(("what", "before", "after"), CHANGES, ids=[c[0] for c in CHANGES])
def test_inputs_that_change_bytes_change_the_key(what: str, before: LoaderSettings, after: LoaderSettings) -> None:
    assert artifact_key(before) != artifact_key(after), what


def test_all_those_keys_are_distinct() -> None:
    keys = {artifact_key(s) for _, a, b in CHANGES for s in (a, b)}
    settings = {canonical(key_inputs(s)) for _, a, b in CHANGES for s in (a, b)}
    assert len(keys) == len(settings)


def test_scope_and_device_count_where_they_decide_bytes() -> None:
    assert artifact_key(NO_SHA, scope="ns-a/creds") != artifact_key(NO_SHA, scope="ns-b/creds")
    assert artifact_key(INT8, device="nvidia-a100") != artifact_key(INT8, device="nvidia-t4")
    assert artifact_key(INT8, scope="a") != artifact_key(INT8, scope="b")  # validation data has no sha256


def test_builder_and_format_versions_change_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = artifact_key(base())
    monkeypatch.setattr(keymod, "__version__", "9.9.9")
    assert artifact_key(base()) != before
    monkeypatch.undo()
    monkeypatch.setattr(keymod, "ARTIFACT_FORMAT_VERSION", 99)
    assert artifact_key(base()) != before


SAME = [
    ("repository mount", base(), base(MD_REPOSITORY="/elsewhere")),
    ("termination log", base(), base(MD_TERMINATION_LOG="/tmp/t")),
    ("source mount", base(), base(MD_SOURCE_MOUNT="/mnt")),
    ("fetch attempts and timeout", base(), base(MD_FETCH_ATTEMPTS="9", MD_FETCH_TIMEOUT_SECONDS="5")),
    ("download limit", base(), base(MD_MAX_DOWNLOAD_BYTES="1000")),
    ("where identical bytes come from (sha256 declared)", base(),
     base(MD_SOURCE_URI="https://mirror.example/m.onnx")),
    ("validation data nobody reads (onnx, no int8)", base(), base(MD_VALIDATION_URI="s3://models/val.npz")),
    ("min agreement without int8", base(), base(MD_MIN_AGREEMENT="0.5")),
    ("GPUs for a python backend (always KIND_CPU)", PYTHON_ONNX, base(MD_BACKEND="python-onnx", MD_GPUS="2")),
    ("runner sys.path with the native backend", base(), base(MD_RUNNER_SYS_PATH="/opt/x")),
    ("input shapes of an ONNX model (read from the graph)", base(),
     base(MD_INPUT_SHAPES='[{"name": "x", "dtype": "float32", "shape": [4]}]')),
    ("warm-up of a python model (its config has no inputs)", PYTHON, base(MD_FORMAT="python", MD_WARMUP="false")),
    ("torchscript shape data when shapes are declared",
     replace(TORCHSCRIPT, input_shapes=(InputShape("x", "float32", (4,)),)),
     replace(TORCHSCRIPT, input_shapes=(InputShape("x", "float32", (4,)),), validation_uri="s3://o/v.npz")),
]


@pytest.mark.parametrize(("what", "a", "b"), SAME, ids=[c[0] for c in SAME])
def test_inputs_that_do_not_change_bytes_keep_the_key(what: str, a: LoaderSettings, b: LoaderSettings) -> None:
    assert artifact_key(a) == artifact_key(b), what


def test_scope_and_device_do_not_count_where_they_cannot_matter() -> None:
    assert artifact_key(base(), scope="ns-a") == artifact_key(base(), scope="ns-b")  # sha256 declared
    assert artifact_key(base(), device="nvidia-a100") == artifact_key(base())  # no gate


def test_credentials_in_a_uri_are_not_identity_and_never_in_the_inputs() -> None:
    a = base(MD_SHA256="", MD_SOURCE_URI="https://bob:pa55word@host.example/m.onnx?X-Amz-Signature=deadbeef")
    b = base(MD_SHA256="", MD_SOURCE_URI="https://host.example/m.onnx?X-Amz-Signature=0ther")
    assert artifact_key(a) == artifact_key(b)
    text = canonical(key_inputs(a)).decode()
    assert "pa55word" not in text and "deadbeef" not in text and "bob" not in text


def test_key_shape_is_label_safe_and_stable() -> None:
    k = artifact_key(base())
    assert KEY_PATTERN.match(k) and is_key(k) and len(k) <= 63 and k.startswith("digits-")
    assert artifact_key(base()) == k  # pure: same inputs, same key
    long = artifact_key(base(MD_MODEL_NAME="A_Very.Long--Model_Name.With.Many.Parts-0123456789-xyz"))
    assert is_key(long) and len(long) <= 63


@pytest.mark.parametrize(("name", "want"), [("digits", "digits"), ("ResNet_50.v2", "resnet-50-v2"), ("___", "model"),
                                             ("a" * 80, "a" * 30), ("x" * 29 + "_y", "x" * 29)])
def test_slug(name: str, want: str) -> None:
    assert slug(name) == want


def test_golden_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing what the key hashes rebuilds every stored artifact: do it on purpose (bump
    ARTIFACT_FORMAT_VERSION) and update this value."""
    monkeypatch.setattr(keymod, "__version__", "0.1.0")
    assert artifact_key(base()) == GOLDEN


GOLDEN = "digits-36b63aabb80daca386d31b25979672ae"


def test_key_inputs_are_json_data() -> None:
    inputs = key_inputs(replace(INT8, dynamic_batching=DynamicBatching(100, (4, 8)), backend=Backend.PYTHON_ONNX,
                                repository=Path("/x")))
    assert canonical(inputs) == canonical(json.loads(json.dumps(inputs)))  # plain JSON, round-trips
    assert inputs["dynamicBatching"] == {"maxQueueDelayMicroseconds": 100, "preferredBatchSizes": [4, 8]}
    assert inputs["validation"] == {"uri": "s3://models/val.npz", "scope": ""}
    assert inputs["minAgreement"] == 0.99 and inputs["source"] == {"sha256": SHA}
