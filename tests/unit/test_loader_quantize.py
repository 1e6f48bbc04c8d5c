"""int8 quantization: what the loader writes (the gates' decisions are in test_loader_cli)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modeldeploy.loader import checkdata, onnx_meta, quantize
from modeldeploy.loader.convert import convert
from modeldeploy.loader.quantize import top1_agreement, write_int8
from modeldeploy.loader.settings import InputShape
from tests.support.serving_digits import require_torch


def _conv_bn_torchscript(path: Path) -> Path:
    """Conv + BatchNorm blocks as in ResNets; fresh BNs fold to equal biases, which the exporter shares.

    torch.onnx deduplicates equal initializers and feeds the copies through Identity nodes.
    """
    torch = require_torch()
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    torch.jit.script(model).save(str(path))
    return path


def _producers(model_path: Path) -> tuple[dict[str, str], list[object]]:
    import onnx

    graph = onnx.load(str(model_path)).graph
    return {out: node.op_type for node in graph.node for out in node.output}, list(graph.node)


def test_every_convolution_of_a_batchnorm_net_is_quantized(tmp_path: Path) -> None:
    """Weights, activations and biases of each Conv come from DequantizeLinear: no float Conv is left.

    Without folding the exporter's Identity nodes first, the biases stayed float and the ResNet-50
    "int8" model ran slower than fp32.
    """
    src = _conv_bn_torchscript(tmp_path / "net.pt")
    fp32 = convert(src, "torchscript", tmp_path / "model.onnx", 8,
                   [InputShape(name="x", dtype="float32", shape=(3, 16, 16))])
    assert "Identity" in {n.op_type for n in _producers(fp32)[1]}  # the case this test is about
    sig = onnx_meta.read_signature(fp32)
    int8 = tmp_path / "model.int8.onnx"
    write_int8(fp32, int8, checkdata.generate(sig), sig)

    produced_by, nodes = _producers(int8)
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        sources = [produced_by.get(name, "initializer") for name in conv.input]
        assert sources == ["DequantizeLinear"] * len(conv.input), (conv.name, sources)


def test_agreement_of_outputs_that_are_not_class_scores_is_closeness() -> None:
    assert top1_agreement(np.array([[1.0], [2.0]]), np.array([[1.001], [2.5]])) == 0.5


def test_calibrating_a_feed_at_a_time_quantizes_exactly_as_one_run_over_all_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The strided calibration (its memory: one feed's outputs, not every sample's) merges the
    per-feed min/max: the int8 model's bytes are those of a single run over all samples."""
    src = _conv_bn_torchscript(tmp_path / "net.pt")
    fp32 = convert(src, "torchscript", tmp_path / "model.onnx", 8,
                   [InputShape(name="x", dtype="float32", shape=(3, 16, 16))])
    sig = onnx_meta.read_signature(fp32)
    data = checkdata.generate(sig, samples=40)
    assert data.samples > quantize.CALIBRATION_FEED  # several feeds
    (tmp_path / "strided").mkdir()
    write_int8(fp32, tmp_path / "strided" / "int8.onnx", data, sig)
    monkeypatch.setattr(quantize, "CALIBRATION_FEED", data.samples)  # one feed: all samples at once
    (tmp_path / "one").mkdir()
    write_int8(fp32, tmp_path / "one" / "int8.onnx", data, sig)
    assert (tmp_path / "strided" / "int8.onnx").read_bytes() == (tmp_path / "one" / "int8.onnx").read_bytes()
