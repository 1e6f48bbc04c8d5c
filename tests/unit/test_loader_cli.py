"""The loader end to end on local files: repository layout, atomicity, failure messages, no secrets."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from modeldeploy.loader.checksum import sha256_of
from modeldeploy.loader.cli import main
from modeldeploy.loader.quantize import QuantizationReport, rejection, top1_agreement
from modeldeploy.loader.repository import STAGING_PREFIX
from tests.support.serving_models import ECHO_MODEL_PY, echo_tarball, linear_onnx

SECRET = "s3cr3t-Very-Long-Secret-Value-0123456789"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    linear_onnx(path)
    return path


def run(tmp_path: Path, **env: str) -> tuple[int, str, Path]:
    repo = tmp_path / "repo"
    term = tmp_path / "termination-log"
    full = {"MD_MODEL_NAME": "m", "MD_REPOSITORY": str(repo), "MD_TERMINATION_LOG": str(term), **env}
    code = main([], full)
    return code, term.read_text() if term.exists() else "", repo


def leftovers(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir()) if repo.exists() else []


def test_onnx_for_the_cpu_image(tmp_path: Path, model: Path) -> None:
    code, msg, repo = run(tmp_path, MD_SOURCE_URI=f"file://{model}", MD_MAX_BATCH_SIZE="8", MD_BACKEND="python-onnx",
                          MD_RUNNER_SYS_PATH="/opt/stub-site", MD_SHA256=sha256_of(model))
    assert (code, msg) == (0, "")
    assert leftovers(repo) == ["m"]  # no staging or work directories remain
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["model.onnx", "model.py"]
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    runner = (repo / "m" / "1" / "model.py").read_text()
    assert runner.index("'/opt/stub-site'") < runner.index("import onnxruntime")
    config = (repo / "m" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 8" in config
    assert 'name: "x"' in config and "dims: [ 4 ]" in config and 'name: "logits"' in config and "dims: [ 3 ]" in config


def test_onnx_for_the_gpu_image_and_a_rerun_replaces_it(tmp_path: Path, model: Path) -> None:
    env = {"MD_SOURCE_URI": f"file://{model}", "MD_MAX_BATCH_SIZE": "4", "MD_GPUS": "2"}
    assert run(tmp_path, **env)[0] == 0
    code, _, repo = run(tmp_path, **{**env, "MD_WARMUP": "false"})  # the init container ran again
    assert code == 0 and leftovers(repo) == ["m"]
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["model.onnx"]  # native backend: no runner
    config = (repo / "m" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "kind: KIND_GPU" in config and "gpus: [ 0, 1 ]" in config
    assert "model_warmup" not in config


def test_sha256_mismatch_leaves_no_repository(tmp_path: Path, model: Path) -> None:
    code, msg, repo = run(tmp_path, MD_SOURCE_URI=f"file://{model}", MD_SHA256="0" * 64)
    assert code == 1
    assert msg.startswith("sha256 mismatch: want 000000000000…, got ") and msg.endswith("\n") and msg.count("\n") == 1
    assert leftovers(repo) == []


def test_a_failed_update_keeps_the_previous_model(tmp_path: Path, model: Path) -> None:
    assert run(tmp_path, MD_SOURCE_URI=f"file://{model}")[0] == 0
    code, _, repo = run(tmp_path, MD_SOURCE_URI=f"file://{model}", MD_SHA256="1" * 64)
    assert code == 1 and leftovers(repo) == ["m"]
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == model.read_bytes()


def test_stale_staging_from_a_killed_run_is_removed(tmp_path: Path, model: Path) -> None:
    (tmp_path / "repo" / f"{STAGING_PREFIX}stage-old" / "m").mkdir(parents=True)
    code, _, repo = run(tmp_path, MD_SOURCE_URI=f"file://{model}")
    assert code == 0 and leftovers(repo) == ["m"]


def test_wrong_format(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"<html>this is a login page, not a model</html>")
    code, msg, repo = run(tmp_path, MD_SOURCE_URI=f"file://{bogus}")
    assert code == 1 and msg.startswith("not a valid ONNX model") and leftovers(repo) == []


def test_missing_source(tmp_path: Path) -> None:
    code, msg, _ = run(tmp_path, MD_SOURCE_URI="pvc://store/team/m.onnx", MD_SOURCE_MOUNT=str(tmp_path / "mnt"))
    assert code == 1
    assert msg.strip() == f"pvc://store/team/m.onnx does not exist (claim store is mounted at {tmp_path / 'mnt'})"


def test_pvc_source_reads_the_mounted_claim(tmp_path: Path, model: Path) -> None:
    code, _, repo = run(tmp_path, MD_SOURCE_URI="pvc://store/model.onnx", MD_SOURCE_MOUNT=str(model.parent))
    assert code == 0 and (repo / "m" / "1" / "model.onnx").exists()


def test_pvc_validation_data_must_be_on_the_mounted_claim(tmp_path: Path, model: Path) -> None:
    np.savez(model.parent / "val.npz", x=np.zeros((4, 4), dtype=np.float32))
    mount = {"MD_SOURCE_URI": "pvc://store/model.onnx", "MD_SOURCE_MOUNT": str(model.parent)}
    code, msg, repo = run(tmp_path, **mount, MD_VALIDATION_URI="pvc://other/val.npz")
    assert code == 2
    assert msg.strip() == "MD_VALIDATION_URI: claim other is not mounted; only the model source's claim is"
    assert leftovers(repo) == []
    assert run(tmp_path, **mount, MD_VALIDATION_URI="pvc://store/val.npz")[0] == 0


def test_fixed_batch_dimension_cannot_batch(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "fixed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    code, msg, _ = run(tmp_path, MD_SOURCE_URI=f"file://{path}", MD_MAX_BATCH_SIZE="8")
    assert code == 1 and "fixed first dimension 1" in msg and "maxBatchSize 0" in msg
    assert run(tmp_path, MD_SOURCE_URI=f"file://{path}", MD_MAX_BATCH_SIZE="0")[0] == 0


def test_config_errors_exit_2_with_a_reason(tmp_path: Path) -> None:
    code, msg, repo = run(tmp_path, MD_SOURCE_URI="ftp://x/m.onnx")
    assert code == 2 and msg.startswith("unsupported source URI scheme ftp") and leftovers(repo) == []


def test_python_model_tarball_keeps_the_users_config_under_our_name(tmp_path: Path) -> None:
    tarball = tmp_path / "echo.tar.gz"
    tarball.write_bytes(echo_tarball())
    code, _, repo = run(tmp_path, MD_SOURCE_URI=f"file://{tarball}", MD_FORMAT="python")
    assert code == 0
    assert (repo / "m" / "1" / "model.py").read_text() == ECHO_MODEL_PY
    config = (repo / "m" / "config.pbtxt").read_text()
    assert config.startswith('name: "m"\n') and "whatever-the-user-called-it" not in config


def test_python_model_directory_without_config(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    src.mkdir()
    (src / "model.py").write_text(ECHO_MODEL_PY)
    (src / "helper.py").write_text("X = 1\n")
    code, _, repo = run(tmp_path, MD_SOURCE_URI=f"file://{src}/", MD_FORMAT="python", MD_MAX_BATCH_SIZE="4")
    assert code == 0
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["helper.py", "model.py"]
    config = (repo / "m" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config and "input [" not in config


def test_python_model_archive_cannot_escape(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    code, msg, repo = run(tmp_path, MD_SOURCE_URI=f"file://{evil}", MD_FORMAT="python")
    assert code == 1 and "would land outside the model directory" in msg
    assert not (tmp_path / "outside.txt").exists() and leftovers(repo) == []


def test_quantization_gate_decisions() -> None:
    good = QuantizationReport(agreement=0.995, samples=450, origin="validation data", fp32_seconds=2e-3,
                              int8_seconds=1e-3)
    assert rejection(good, 0.99) is None
    low = QuantizationReport(0.95, 450, "validation data", 2e-3, 1e-3)
    assert rejection(low, 0.99) == ("int8 model rejected: agreement 0.950 < 0.990 on 450 validation data "
                                    "(run by onnxruntime-cpu)")
    slow = QuantizationReport(1.0, 256, "generated inputs", 1e-3, 3e-3)
    assert rejection(slow, 0.99) == ("int8 model rejected: slower than fp32 (3.000 ms vs 1.000 ms per batch, "
                                     "timed by onnxruntime-cpu)")
    on_triton = QuantizationReport(1.0, 256, "generated inputs", 1e-3, 3e-3, timed_by="triton")
    assert rejection(on_triton, 0.99) == ("int8 model rejected: slower than fp32 (3.000 ms vs 1.000 ms per batch, "
                                          "timed by triton)")


def test_top1_agreement() -> None:
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    b = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1]])
    assert top1_agreement(a, b) == 0.75


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("source", ["s3", "http"])
def test_secrets_appear_nowhere(tmp_path: Path, source: str) -> None:
    """The real process, with a fake secret everywhere a secret can be: none of it reaches the output."""
    term = tmp_path / "termination-log"
    port = _closed_port()
    http_uri = f"http://user:{SECRET}@127.0.0.1:{port}/m.onnx?X-Amz-Signature={SECRET}"
    env = {
        **os.environ,
        "MD_SOURCE_URI": "s3://models/digits/model.onnx" if source == "s3" else http_uri,
        "MD_MODEL_NAME": "m",
        "MD_REPOSITORY": str(tmp_path / "repo"),
        "MD_TERMINATION_LOG": str(term),
        "MD_FETCH_ATTEMPTS": "2",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "AKIA" + SECRET[:12],
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SECRET[::-1],
    }
    proc = subprocess.run([sys.executable, "-m", "modeldeploy.loader"], env=env, capture_output=True, text=True,
                          timeout=120)
    output = proc.stdout + proc.stderr + term.read_text()
    assert proc.returncode == 75  # EX_TEMPFAIL: the operator retries, never fails the revision for it
    shown = "s3://models/digits/model.onnx" if source == "s3" else f"http://127.0.0.1:{port}/m.onnx"
    assert f"network error fetching {shown}" in term.read_text()
    assert proc.stderr.splitlines()[-1].startswith("model-loader: error: network error")
    for needle in (SECRET, SECRET[::-1], SECRET[:12]):
        assert needle not in output
