"""The int8 gates' Triton adapter without a server: settings, names, the wire format, request sizes.

The adapter against a real tritonserver: tests/integration/test_artifact_store.py
(test_int8_build_timed_through_the_gate_triton_records_it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modeldeploy.loader import gate_triton as g
from modeldeploy.loader.errors import ConfigError, QuantizationRejected
from modeldeploy.loader.quantize import TIMED_BY_ONNXRUNTIME_CPU, OnnxruntimeCpu
from modeldeploy.loader.settings import GateTarget, from_sources, gate_target


def test_gate_settings_both_or_neither() -> None:
    assert gate_target("", "") is None
    assert gate_target("http://127.0.0.1:8000/", "/models") == GateTarget("http://127.0.0.1:8000", Path("/models"))
    for url, repo in (("http://127.0.0.1:8000", ""), ("", "/models"), ("https://h:1", "/m"),
                      ("http://h:1/v2", "/m"), ("127.0.0.1:8000", "/m"), ("http://h:1", "models")):
        with pytest.raises(ConfigError):
            gate_target(url, repo)
    env = {"MD_SOURCE_URI": "file:///m.onnx", "MD_MODEL_NAME": "m"}
    assert from_sources([], env).gate is None
    s = from_sources([], {**env, "MD_GATE_TRITON_URL": "http://127.0.0.1:8000", "MD_GATE_REPOSITORY": "/models"})
    assert s.gate == GateTarget("http://127.0.0.1:8000", Path("/models"))


def test_gate_models_never_take_the_served_models_name() -> None:
    assert g.gate_names("digits") == g.GATE_MODELS
    for name in g.GATE_MODELS:
        assert name not in g.gate_names(name)


def _as_triton_reads_it(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    """The request as Triton's binary tensor extension defines it: JSON header, then raw inputs in order."""
    head = json.loads(body[:header_length])
    out, offset = {}, header_length
    for i in head["inputs"]:
        size = i["parameters"]["binary_data_size"]
        dtype = g.TRITON_TO_NUMPY[i["datatype"]]
        out[i["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(i["shape"])
        offset += size
    assert offset == len(body)
    assert head["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]
    return out


def test_requests_carry_every_input_bit_for_bit() -> None:
    feed = {"x": np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # not contiguous
            "mask": np.array([[True], [False], [True], [True]]), "ids": np.arange(4, dtype=np.int64)}
    body, n = g.encode_infer(feed, ["logits"])
    got = _as_triton_reads_it(body, n)
    assert got.keys() == feed.keys()
    for k, v in feed.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    with pytest.raises(QuantizationRejected, match="cannot send"):
        g.encode_infer({"s": np.array(["a"], dtype=object)}, ["logits"])


def test_responses_binary_or_json() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1], [2]], dtype=np.int64)
    head = json.dumps({"model_name": "m", "outputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "datatype": "INT64", "shape": [2, 1], "parameters": {"binary_data_size": b.nbytes}}]}).encode()
    out = g.decode_infer(head + a.tobytes() + b.tobytes(), len(head))
    assert np.array_equal(out["a"], a) and np.array_equal(out["b"], b) and out["b"].dtype == np.int64
    plain = json.dumps({"outputs": [{"name": "a", "datatype": "FP32", "shape": [2, 3], "data": a.ravel().tolist()}]})
    assert np.array_equal(g.decode_infer(plain.encode(), None)["a"], a)
    with pytest.raises(g.GateUnavailable):
        g.decode_infer(json.dumps({"outputs": [{"name": "s", "datatype": "BYTES", "shape": [1]}]}).encode(), None)


def test_requests_respect_max_batch_size_and_the_body_limit() -> None:
    feed = {"x": np.zeros((64, 8), dtype=np.float32), "y": np.ones((64, 2), dtype=np.int64)}
    parts = list(g.batches(feed, 32))
    assert [len(p["x"]) for p in parts] == [32, 32] and all(len(p["y"]) == len(p["x"]) for p in parts)
    assert [len(p["x"]) for p in g.batches(feed, 0)] == [64]  # no batch axis: as the model takes it
    assert [len(p["x"]) for p in g.batches(feed, 64)] == [64]
    assert [len(p["x"]) for p in g.batches(feed, 10)] == [10] * 6 + [4]
    # 48 bytes a sample, at most 480 bytes a request -> 10 samples, even with maxBatchSize 64
    assert [len(p["x"]) for p in g.batches(feed, 64, max_bytes=480)] == [10] * 6 + [4]
    assert [len(p["x"]) for p in g.batches(feed, 64, max_bytes=1)] == [1] * 64  # never 0
    joined = np.concatenate([p["x"] for p in g.batches(feed, 10)])
    assert np.array_equal(joined, feed["x"])


def test_an_unreachable_gate_triton_is_transient() -> None:
    client = g.TritonHTTP("http://127.0.0.1:9", timeout_s=1)  # discard port: nothing listens
    assert not client.live()
    with pytest.raises(g.GateUnavailable, match="not live after 0s") as e:
        client.wait_live(deadline_s=0, sleep=lambda _: None)
    assert e.value.exit_code == 75


def test_without_a_gate_triton_onnxruntime_on_this_cpu_times() -> None:
    assert OnnxruntimeCpu.timed_by == TIMED_BY_ONNXRUNTIME_CPU == "onnxruntime-cpu"
    assert g.TIMED_BY == "triton"
