"""The manifest: computed from a model directory, round-trips as JSON, and checks a directory exactly."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from modeldeploy.artifact.errors import EXIT_CORRUPT, ManifestError
from modeldeploy.artifact.manifest import Gates, Manifest, manifest_for, path_problem, verify
from modeldeploy.artifact.store import check_key, check_rel, file_name, manifest_name
from modeldeploy.loader.errors import ConfigError
from modeldeploy.loader.quantize import QuantizationReport

KEY = "digits-0123456789abcdef0123456789abcdef"
ONNX = b"\x08\x08onnx-model-bytes" * 10
CONFIG = b'name: "digits"\nbackend: "onnxruntime"\n'


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "digits"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(ONNX)
    (d / "config.pbtxt").write_bytes(CONFIG)
    return d


def make(model_dir: Path, **kw: object) -> Manifest:
    return manifest_for(model_dir, key=KEY, model_name="digits", **kw)  # type: ignore[arg-type]


def test_manifest_lists_every_file_with_sha256_and_size(model_dir: Path) -> None:
    m = make(model_dir, build_seconds=12.5, built_at="2026-01-02T03:04:05Z")
    assert dict(m.files) == {
        "1/model.onnx": m.files["1/model.onnx"],
        "config.pbtxt": m.files["config.pbtxt"],
    }
    assert m.files["1/model.onnx"].sha256 == hashlib.sha256(ONNX).hexdigest()
    assert m.files["config.pbtxt"].size == len(CONFIG)
    assert m.model_file == "1/model.onnx" and m.model_sha256 == hashlib.sha256(ONNX).hexdigest()
    assert m.total_bytes == len(ONNX) + len(CONFIG)
    assert (m.quantized, m.gates, m.format_version) == (False, None, 1)


def test_python_model_file(tmp_path: Path) -> None:
    d = tmp_path / "echo"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text("print(1)\n")
    assert make(d).model_file == "1/model.py"


def test_json_round_trip_and_stable_bytes(model_dir: Path) -> None:
    report = QuantizationReport(agreement=0.9931, samples=512, origin="validation data", fp32_seconds=0.02,
                                int8_seconds=0.01, fp32_accuracy=0.97, int8_accuracy=0.965)
    m = make(model_dir, gates=Gates.from_report(report), quantized=True, build_seconds=57.25,
             built_at="2026-01-02T03:04:05Z", key_inputs={"format": "onnx"}, tools={"onnxruntime": "1.32.0"})
    data = m.to_json()
    again = Manifest.from_json(data)
    assert again == m and again.to_json() == data
    doc = json.loads(data)
    assert doc["modelSha256"] == m.model_sha256 and doc["quantized"] is True
    assert doc["gates"] == {"agreement": 0.9931, "samples": 512, "origin": "validation data", "fp32Seconds": 0.02,
                            "int8Seconds": 0.01, "speedup": 2.0, "fp32Accuracy": 0.97, "int8Accuracy": 0.965,
                            "timedBy": "onnxruntime-cpu"}


def test_gates_say_what_timed_them() -> None:
    report = QuantizationReport(agreement=1.0, samples=8, origin="generated inputs", fp32_seconds=0.2,
                                int8_seconds=0.1, timed_by="triton")
    gates = Gates.from_report(report)
    assert gates.to_json()["timedBy"] == "triton" and Gates.from_json(gates.to_json()) == gates
    # a manifest written before timedBy existed was timed by onnxruntime on the builder's CPU
    old = {k: v for k, v in gates.to_json().items() if k != "timedBy"}
    assert Gates.from_json(old).timed_by == "onnxruntime-cpu"


def test_infinite_speedup_is_null() -> None:
    report = QuantizationReport(agreement=1.0, samples=1, origin="random", fp32_seconds=0.1, int8_seconds=0.0)
    assert Gates.from_report(report).speedup is None


def test_verify_clean(model_dir: Path) -> None:
    assert verify(model_dir, make(model_dir)) == []


def test_verify_names_each_problem(model_dir: Path) -> None:
    m = make(model_dir)
    flipped = bytearray(ONNX)
    flipped[5] ^= 0xFF
    (model_dir / "1" / "model.onnx").write_bytes(bytes(flipped))  # same size, other bytes
    (model_dir / "config.pbtxt").write_bytes(CONFIG + b"# more\n")
    (model_dir / "1" / "extra.bin").write_bytes(b"x")
    problems = verify(model_dir, m)
    assert problems[0] == "1/extra.bin: not in the manifest"
    assert problems[1].startswith("1/model.onnx: sha256 mismatch (manifest ")
    assert problems[2] == f"config.pbtxt: size {len(CONFIG) + 7}, manifest says {len(CONFIG)}"
    assert len(problems) == 3
    # without hashing, only the structure and sizes are checked
    assert [p.split(":")[0] for p in verify(model_dir, m, content=False)] == ["1/extra.bin", "config.pbtxt"]


def test_verify_missing_file_and_missing_dir(model_dir: Path) -> None:
    m = make(model_dir)
    (model_dir / "config.pbtxt").unlink()
    assert verify(model_dir, m) == ["config.pbtxt: missing"]
    assert verify(model_dir.parent / "nope", m) == ["nope: model directory is missing or not a directory"]


def test_verify_refuses_links_even_to_the_right_bytes(model_dir: Path, tmp_path: Path) -> None:
    m = make(model_dir)
    outside = tmp_path / "copy.onnx"
    outside.write_bytes(ONNX)
    (model_dir / "1" / "model.onnx").unlink()
    (model_dir / "1" / "model.onnx").symlink_to(outside)
    assert verify(model_dir, m) == ["1/model.onnx: is a symbolic link"]
    (model_dir / "1" / "model.onnx").unlink()
    (model_dir / "1" / "model.onnx").write_bytes(ONNX)
    os.mkfifo(model_dir / "pipe")
    assert verify(model_dir, m) == ["pipe: is not a regular file"]


def test_manifest_for_refuses_links(model_dir: Path) -> None:
    (model_dir / "1" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ManifestError, match="1/link: is a symbolic link"):
        make(model_dir)


def _doc(model_dir: Path) -> dict:
    return json.loads(make(model_dir).to_json())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["files"].update({"/etc/passwd": d["files"]["config.pbtxt"]}), "absolute path"),
        (lambda d: d["files"].update({"1/../../x": d["files"]["config.pbtxt"]}), "'..' segment"),
        (lambda d: d["files"].update({"1//x": d["files"]["config.pbtxt"]}), "empty, '.' or '..' segment"),
        (lambda d: d["files"].update({"1\\x": d["files"]["config.pbtxt"]}), "backslash"),
        (lambda d: d["files"]["config.pbtxt"].update({"sha256": "XYZ"}), "sha256 is not 64 lowercase hex"),
        (lambda d: d["files"]["config.pbtxt"].update({"size": -1}), "negative size"),
        (lambda d: d.update({"formatVersion": 2}), "manifest format 2 is not 1"),
        (lambda d: d.update({"key": "../../etc"}), "is not an artifact key"),
        (lambda d: d.update({"modelSha256": "0" * 64}), "modelSha256 is not the sha256 of modelFile"),
        (lambda d: d.update({"modelFile": "1/other.onnx"}), "modelFile '1/other.onnx' is not one of its files"),
        (lambda d: d.pop("files"), "KeyError"),
        (lambda d: d.update({"files": {}}), "it lists no files"),
    ],
)
def test_bad_manifests_are_refused(model_dir: Path, change, message: str) -> None:
    doc = _doc(model_dir)
    change(doc)
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(json.dumps(doc).encode())
    assert message in str(e.value)
    assert e.value.exit_code == EXIT_CORRUPT


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"{}", b" " * (5 << 20)])
def test_unreadable_manifests_are_corrupt(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(data)


@pytest.mark.parametrize(
    ("rel", "ok"),
    [("config.pbtxt", True), ("1/model.onnx", True), ("1/lib/util.py", True), ("", False), ("/x", False),
     ("../x", False), ("1/./x", False), ("a//b", False), ("a/", False), ("a\\b", False), ("a\nb", False)],
)
def test_path_rules(rel: str, ok: bool) -> None:
    assert (path_problem(rel) is None) is ok


def test_store_layout() -> None:
    assert manifest_name("", KEY) == f"{KEY}/manifest.json"
    assert manifest_name("/team/artifacts/", KEY) == f"team/artifacts/{KEY}/manifest.json"
    assert file_name("p", KEY, "1/model.onnx") == f"p/{KEY}/model/1/model.onnx"
    with pytest.raises(ConfigError):
        check_key("../etc")
    with pytest.raises(ConfigError):
        check_rel("../manifest.json")
    with pytest.raises(ConfigError):
        file_name("p", KEY, "/abs")
