"""benchmarks/serving.py's helpers: the ceiling is a real maximum, ratios against both baselines,
and a baseline that cannot start or serve stops the run instead of dropping out."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks import _ort_app
from benchmarks import serving as bench
from benchmarks._load import LoadResult, combine


def _tiny_onnx(path: Path) -> Path:
    """y = x @ W over a 4-wide image flattened: enough for onnxruntime to run, fast on any CPU."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _case(tmp_path: Path) -> bench.ModelCase:
    inputs = [np.full((1, 2, 2), float(i), dtype=np.float32) for i in range(4)]
    return bench.ModelCase("tiny", (1, 2, 2), tmp_path / "m.pth", tmp_path / "m.pt", tmp_path / "v.npz", inputs,
                           "0.0", 1.0, 0.0)


def test_ceiling_settings_cover_threads_and_execution_modes() -> None:
    labels = [s.label for s in bench.ceiling_settings(2)]
    assert labels == ["default", "sequential intra=2 inter=1 callers=1", "sequential intra=1 inter=1 callers=2",
                      "parallel intra=1 inter=2 callers=1", "parallel intra=2 inter=2 callers=1"]
    assert len(bench.ceiling_settings(1)) == 3  # on one core the 'all cores' and 'one per core' settings coincide
    assert bench.ceiling_batches() == [1, 8, bench.MAX_BATCH, 2 * bench.MAX_BATCH]


def test_ceiling_is_the_best_cell_of_the_grid_and_can_be_measured_again(tmp_path: Path) -> None:
    case = _case(tmp_path)
    ceil = bench.ort_ceiling(_tiny_onnx(tmp_path / "tiny.onnx"), case, min_seconds=0.01)
    assert len(ceil["grid"]) == len(bench.ceiling_settings(os.cpu_count() or 1)) * len(bench.ceiling_batches())
    assert ceil["images_per_s"] == max(r["images_per_s"] for r in ceil["grid"]) == ceil["best"]["images_per_s"]
    assert all(r["runs"] >= 2 * r["callers"] for r in ceil["grid"])
    probes = bench.ceiling_probes(tmp_path / "tiny.onnx", case, ceil["grid"])
    assert next(cell["setting"] for cell, _ in probes) == ceil["best"]["setting"]
    assert len(probes) == len(bench.ceiling_settings(os.cpu_count() or 1))  # one per setting: its best cell
    assert all(measure(0.01) > 0 for _, measure in probes)


def test_between_rounds_the_winner_and_each_other_setting_in_turn_are_measured_again() -> None:
    probes = [({"setting": name}, lambda s: 0.0) for name in "abcd"]
    turns = [[cell["setting"] for cell, _ in bench.probes_for_round(probes, k)] for k in range(4)]
    assert turns == [["a", "b"], ["a", "c"], ["a", "d"], ["a", "b"]]
    assert bench.probes_for_round(probes[:1], 5) == probes[:1]


def test_the_ceiling_is_the_highest_measurement_with_its_settings() -> None:
    ceil = {"best": {"setting": "default", "batch": 32, "images_per_s": 50.0, "intra": 0},
            "again": [{"setting": "default", "batch": 32, "images_per_s": 40.0},
                      {"setting": "sequential intra=1 inter=1 callers=2", "batch": 8, "images_per_s": 72.0}]}
    assert bench.ceiling_result(ceil) == {"setting": "sequential intra=1 inter=1 callers=2", "batch": 8,
                                          "images_per_s": 72.0, "from": "between rounds"}
    assert bench.ceiling_result({"best": ceil["best"]})["from"] == "sweep"


def test_slices_combine_into_one_result_per_level() -> None:
    def part(n: int, seconds: float, ms: float, errors: int = 0) -> LoadResult:
        return LoadResult(8, n, errors, seconds, n / seconds, ms, ms, "boom" if errors else "", [ms] * n)

    res = combine([part(100, 1.0, 2.0), part(300, 2.0, 4.0, errors=1)])
    assert (res.requests, res.errors, res.seconds, res.throughput) == (400, 1, 3.0, 400 / 3.0)
    assert (res.p50_ms, res.first_error) == (4.0, "boom")
    assert "latencies_ms" not in res.as_dict()


def test_ratios_against_flask_and_the_onnxruntime_server() -> None:
    def row(rps: float, p50: float, p99: float) -> dict[str, float]:
        return {"throughput": rps, "p50_ms": p50, "p99_ms": p99, "requests": 100}

    levels = {"32": {"flask": row(100, 50, 100), "ort-server": row(400, 10, 40), "triton": row(800, 5, 20)}}
    bench.add_ratios(levels, {"flask": "flask", "ort_server": "ort-server"})
    triton = levels["32"]["triton"]
    assert triton["throughput_vs_flask"] == 8.0 and triton["p99_vs_flask"] == 0.2
    assert triton["throughput_vs_ort_server"] == 2.0 and triton["p99_vs_ort_server"] == 0.5
    assert levels["32"]["ort-server"]["throughput_vs_ort_server"] == 1.0


@pytest.mark.parametrize(("requests", "errors", "fails"), [(100, 0, False), (100, 1, False), (100, 2, True),
                                                           (0, 0, True)])
def test_a_server_that_cannot_serve_stops_the_run(requests: int, errors: int, fails: bool) -> None:
    row = {"concurrency": 8, "requests": requests, "errors": errors, "first_error": "ConnectionRefusedError()"}
    if fails:
        with pytest.raises(bench.BaselineError, match="ConnectionRefusedError"):
            bench.check_row("flask", row)
    else:
        bench.check_row("flask", row)


def test_a_server_that_exits_at_start_stops_the_run_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('no module named flask'); sys.exit(3)"]
    with pytest.raises(bench.BaselineError, match=r"exited with 3.*no module named flask"), bench._http_process(
            "flask", argv, "http://127.0.0.1:9/predict", _case(tmp_path), tmp_path / "log", 30):
        pass
    with pytest.raises(bench.BaselineError, match="cannot start"), bench._http_process(
            "torchserve", [str(tmp_path / "absent")], "http://127.0.0.1:9/", _case(tmp_path), tmp_path / "l2", 30):
        pass


def test_missing_baselines_are_named_before_anything_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    real_find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name: None if name in ("flask", "torchvision") else real_find_spec(name))
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    monkeypatch.setattr(bench, "BIN", tmp_path)
    missing = bench.missing_requirements(with_torchserve=True)
    assert any("flask" in m for m in missing) and any("torchvision" in m for m in missing)
    assert any("torchserve" in m for m in missing) and any("java" in m for m in missing)
    assert not any("java" in m or "torchserve" in m for m in bench.missing_requirements(with_torchserve=False))
    assert bench.main(["--quick"]) == 2
    assert "make bench-setup" in capsys.readouterr().err


def test_ort_app_answers_one_image_with_its_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MD_ORT_MODEL", str(_tiny_onnx(tmp_path / "tiny.onnx")))
    monkeypatch.setenv("MD_ORT_SHAPE", "1,2,2")
    monkeypatch.setenv("MD_ORT_THREADS", "1")
    monkeypatch.setattr(_ort_app, "_session", {})
    body = np.ones((1, 2, 2), dtype=np.float32).tobytes()
    status: list[str] = []
    out = _ort_app.wsgi({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)},
                        lambda s, headers: status.append(s))
    assert status == ["200 OK"]
    assert json.loads(b"".join(out)) == [18.0, 22.0, 26.0]  # column sums of W
