"""Artifacts against real stores: MinIO (S3, SigV4) and a directory. No mocks.

Build once, reuse without converting, fetch byte-identical files, detect and name a corrupt
object, treat a missing manifest as "not built", survive two concurrent builders of one key, and
keep the store's credentials out of every output.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modeldeploy.artifact.cli import main
from modeldeploy.artifact.dirstore import DirStore
from modeldeploy.artifact.manifest import Manifest
from modeldeploy.artifact.s3store import S3Store
from modeldeploy.artifact.store import ArtifactStore, store_env
from modeldeploy.artifact.transfer import stored_problems
from modeldeploy.loader import sigv4
from modeldeploy.loader.fetch import FetchOptions, S3Client
from tests.support.serving import free_port, running_gate, triton_install
from tests.support.serving_models import linear_onnx
from tests.support.serving_s3 import S3Server, running_minio

pytestmark = pytest.mark.integration
MODELS, ARTIFACTS = "models", "artifacts"
PREFIX = "team-a/artifacts"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, bytes]]:
    work = tmp_path_factory.mktemp("artifact-s3")
    model = work / "model.onnx"
    linear_onnx(model)
    with running_minio(work) as server:
        server.create_bucket(MODELS)
        server.create_bucket(ARTIFACTS)
        server.put(MODELS, "linear/model.onnx", model.read_bytes())
        yield server, model.read_bytes()


def s3_env(server: S3Server, model: bytes, version: str, **extra: str) -> dict[str, str]:
    """What a build Job gets: the source's credentials (AWS_*) and the store's (MD_STORE_AWS_*)."""
    store = {f"MD_STORE_{k}": v for k, v in server.env().items()}
    return {**server.env(), **store, "MD_ARTIFACT_STORE": f"s3://{ARTIFACTS}/{PREFIX}",
            "MD_SOURCE_URI": f"s3://{MODELS}/linear/model.onnx", "MD_SHA256": hashlib.sha256(model).hexdigest(),
            "MD_MODEL_NAME": "linear", "MD_MODEL_VERSION": version, "MD_MAX_BATCH_SIZE": "8",
            "MD_FETCH_ATTEMPTS": "2", **extra}


def run(tmp: Path, command: str, env: dict[str, str], *args: str) -> tuple[int, dict]:
    """One command in this process, in its own repository and termination log."""
    tmp.mkdir(parents=True, exist_ok=True)
    term = tmp / "termination-log"
    full = {"MD_REPOSITORY": str(tmp / "repo"), "MD_TERMINATION_LOG": str(term), **env}
    code = main([command, *args], full)
    return code, json.loads(term.read_text()) if term.exists() else {}


def s3_store(server: S3Server) -> S3Store:
    return S3Store(ARTIFACTS, PREFIX, server.env(), attempts=2)


def last_modified(server: S3Server, key: str) -> dict[str, datetime]:
    """Every object under the artifact (a real listing) and its Last-Modified (a real HEAD)."""
    client = S3Client(ARTIFACTS, server.env())
    assert client.creds is not None
    prefix = f"{PREFIX}/{key}/"
    objects = client.list_objects(prefix, FetchOptions(env=server.env(), attempts=2), f"s3://{ARTIFACTS}/{prefix}")
    out = {}
    for name, _ in objects:
        path = client.path(name)
        headers = sigv4.sign("HEAD", client.host, path, {}, {}, client.creds, client.region, datetime.now(UTC))
        conn = http.client.HTTPConnection(client.host, timeout=10)
        try:
            conn.request("HEAD", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            out[name.removeprefix(prefix)] = email.utils.parsedate_to_datetime(resp.getheader("Last-Modified") or "")
        finally:
            conn.close()
    return out


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_secret(server: S3Server, *texts: str) -> None:
    for text in texts:
        assert server.secret_key not in text


# ---------------------------------------------------------------- S3 (MinIO)


def test_build_once_then_reuse_without_converting(tmp_path: Path, s3: tuple[S3Server, bytes],
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    server, model = s3
    env = s3_env(server, model, "reuse")
    t0 = time.monotonic()
    code, first = run(tmp_path / "a", "build", env)
    build_s = time.monotonic() - t0
    assert code == 0 and first["result"] == "built" and first["uploaded"] == 2
    key = first["key"]
    assert first["modelSha256"] == hashlib.sha256(model).hexdigest() and first["quantized"] is False
    objects = last_modified(server, key)
    assert sorted(objects) == ["manifest.json", "model/1/model.onnx", "model/config.pbtxt"]
    assert (tmp_path / "a" / "repo" / "linear" / "1" / "model.onnx").exists()  # the pipeline ran

    time.sleep(1.1)  # Last-Modified has one-second resolution: a rewrite would show
    t0 = time.monotonic()
    code, second = run(tmp_path / "b", "build", env)
    reuse_s = time.monotonic() - t0
    assert code == 0 and second["result"] == "reused" and second["uploaded"] == 0
    assert second["key"] == key and second["modelSha256"] == first["modelSha256"]
    assert second["builtAt"] == first["builtAt"]  # the first build's facts, not a new build's
    assert last_modified(server, key) == objects  # nothing written
    assert sorted(p.name for p in (tmp_path / "b" / "repo").iterdir()) == []  # the pipeline never ran
    err = capfd.readouterr().err
    assert "reused, nothing built" in err
    print(f"build {build_s:.2f}s, reuse {reuse_s:.2f}s")


def test_fetch_gives_the_built_bytes(tmp_path: Path, s3: tuple[S3Server, bytes]) -> None:
    server, model = s3
    env = s3_env(server, model, "fetch")
    code, built = run(tmp_path / "build", "build", env)
    assert code == 0
    key = built["key"]
    manifest = Manifest.from_json(s3_store(server).read_manifest(key) or b"")
    fetch_env = {k: v for k, v in env.items() if k.startswith(("MD_STORE_", "MD_ARTIFACT_"))}  # no source, no AWS_*
    code, fetched = run(tmp_path / "pod1", "fetch", {**fetch_env, "MD_ARTIFACT_KEY": key})
    assert code == 0 and fetched["result"] == "fetched" and fetched["modelSha256"] == built["modelSha256"]
    code, _ = run(tmp_path / "pod2", "fetch", {**fetch_env, "MD_ARTIFACT_KEY": key, "MD_MODEL_NAME": "linear"})
    assert code == 0
    one, two = tree(tmp_path / "pod1" / "repo" / "linear"), tree(tmp_path / "pod2" / "repo" / "linear")
    assert one == two == tree(tmp_path / "build" / "repo" / "linear")
    assert {rel: hashlib.sha256(b).hexdigest() for rel, b in one.items()} == {
        rel: f.sha256 for rel, f in manifest.files.items()}
    assert one["1/model.onnx"] == model
    assert [p.name for p in (tmp_path / "pod1" / "repo").iterdir()] == ["linear"]  # no staging left over


def test_corrupt_object_is_named_then_rebuilt(tmp_path: Path, s3: tuple[S3Server, bytes],
                                              capfd: pytest.CaptureFixture[str]) -> None:
    server, model = s3
    env = s3_env(server, model, "corrupt")
    code, built = run(tmp_path / "build", "build", env)
    key = built["key"]
    flipped = bytearray(model)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    server.put(ARTIFACTS, f"{PREFIX}/{key}/model/1/model.onnx", bytes(flipped))

    code, failed = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    err = capfd.readouterr().err
    assert code == 65 and failed["exitCode"] == 65 and failed["transient"] is False
    assert failed["reason"].startswith(f"artifact corrupt: s3://{ARTIFACTS}/{PREFIX}/{key}/model/1/model.onnx: "
                                       "sha256 mismatch")
    assert "1/model.onnx: sha256 mismatch" in err and "downloading it again" in err  # retried once
    assert list((tmp_path / "pod" / "repo").iterdir()) == []  # nothing served, nothing half-written

    code, rebuilt = run(tmp_path / "rebuild", "build", env)  # what the operator does on exit 65
    assert code == 0 and rebuilt["result"] == "built" and rebuilt["uploaded"] == 1  # only the bad file
    assert "is bad (artifact corrupt" in capfd.readouterr().err
    code, _ = run(tmp_path / "pod2", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 0 and (tmp_path / "pod2" / "repo" / "linear" / "1" / "model.onnx").read_bytes() == model


def test_missing_manifest_means_not_built(tmp_path: Path, s3: tuple[S3Server, bytes]) -> None:
    server, model = s3
    env = s3_env(server, model, "missing")
    code, built = run(tmp_path / "build", "build", env)
    key = built["key"]
    s3_store(server).delete_manifest(key)  # what a build that died before its commit leaves

    code, failed = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 66 and failed["reason"] == (f"artifact {key} is not built: no manifest at "
                                               f"s3://{ARTIFACTS}/{PREFIX}/{key}")
    code, again = run(tmp_path / "again", "build", env)
    assert code == 0 and again["result"] == "built" and again["uploaded"] == 0  # the files were already right
    assert run(tmp_path / "pod2", "fetch", {**env, "MD_ARTIFACT_KEY": key})[0] == 0


def test_two_concurrent_builds_leave_one_verified_artifact(tmp_path: Path, s3: tuple[S3Server, bytes]) -> None:
    server, model = s3
    env = s3_env(server, model, "race")
    procs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        full = {**os.environ, **env, "MD_REPOSITORY": str(tmp_path / name / "repo"),
                "MD_TERMINATION_LOG": str(tmp_path / name / "term")}
        procs.append(subprocess.Popen([sys.executable, "-m", "modeldeploy.artifact", "build"], env=full,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [json.loads((tmp_path / name / "term").read_text()) for name in ("one", "two")]
    assert [p.returncode for p in procs] == [0, 0], outputs
    print("race:", [(r["result"], r["uploaded"]) for r in results])
    assert {r["key"] for r in results} == {results[0]["key"]}
    assert "built" in {r["result"] for r in results}
    key = results[0]["key"]
    store = s3_store(server)
    manifest = Manifest.from_json(store.read_manifest(key) or b"")
    assert stored_problems(store, key, manifest) == []
    code, fetched = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 0 and fetched["modelSha256"] == hashlib.sha256(model).hexdigest()
    for out, err in outputs:
        no_secret(server, out, err)


def test_store_unreachable_is_transient(tmp_path: Path, s3: tuple[S3Server, bytes],
                                        capfd: pytest.CaptureFixture[str]) -> None:
    server, model = s3
    env = {**s3_env(server, model, "down"), "MD_STORE_AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens
    code, result = run(tmp_path / "build", "build", env)
    assert code == 75 and result["transient"] is True and "network error" in result["reason"]
    assert not (tmp_path / "build" / "repo" / "linear").exists()  # no conversion without a store
    code, result = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": "linear-" + "0" * 32})
    assert code == 75 and "gave up after 2 attempts" in result["reason"]
    out, err = capfd.readouterr()
    no_secret(server, out, err, json.dumps(result))


def test_store_credentials_refused_are_the_platforms_problem(tmp_path: Path, s3: tuple[S3Server, bytes],
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    server, model = s3
    wrong = "not-the-store-secret-" + "y" * 20
    env = {**s3_env(server, model, "denied"), "MD_STORE_AWS_SECRET_ACCESS_KEY": wrong}
    code, result = run(tmp_path / "build", "build", env)  # the source's AWS_* credentials are fine
    assert code == 77 and result["reason"].startswith("HTTP 403 Forbidden (SignatureDoesNotMatch) on s3://")
    code, result2 = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": "linear-" + "0" * 32})
    assert code == 77
    out, err = capfd.readouterr()
    for text in (out, err, json.dumps(result), json.dumps(result2)):
        assert wrong not in text and server.secret_key not in text and server.access_key not in text
    assert "retrying" not in err  # 403 is not retried


# ---------------------------------------------------------------- a directory (a mounted PVC)


def dir_env(tmp_path: Path, model: bytes, store: Path) -> dict[str, str]:
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(model)
    store.mkdir(parents=True, exist_ok=True)
    return {"MD_ARTIFACT_STORE": f"file://{store}", "MD_SOURCE_URI": f"file://{src}", "MD_MODEL_NAME": "linear",
            "MD_MAX_BATCH_SIZE": "8"}


@pytest.fixture
def linear(tmp_path: Path) -> bytes:
    linear_onnx(tmp_path / "linear.onnx")
    return (tmp_path / "linear.onnx").read_bytes()


def test_directory_store_basics(tmp_path: Path, linear: bytes) -> None:
    root = tmp_path / "pvc"
    env = dir_env(tmp_path, linear, root)
    code, built = run(tmp_path / "b1", "build", env)
    assert code == 0 and built["result"] == "built"
    key = built["key"]
    assert sorted(tree(root / key)) == ["manifest.json", "model/1/model.onnx", "model/config.pbtxt"]
    mtimes = {p: p.stat().st_mtime_ns for p in (root / key).rglob("*")}
    code, reused = run(tmp_path / "b2", "build", env)
    assert code == 0 and reused["result"] == "reused"
    assert {p: p.stat().st_mtime_ns for p in (root / key).rglob("*")} == mtimes
    assert list((tmp_path / "b2" / "repo").iterdir()) == []

    code, _ = run(tmp_path / "pod", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 0 and tree(tmp_path / "pod" / "repo" / "linear") == tree(root / key / "model")

    target = root / key / "model" / "1" / "model.onnx"
    target.write_bytes(linear[:-1] + b"\x00")
    code, failed = run(tmp_path / "pod2", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 65 and f"{key}/model/1/model.onnx: sha256 mismatch" in failed["reason"]

    good = tmp_path / "elsewhere.onnx"
    good.write_bytes(linear)
    target.unlink()
    target.symlink_to(good)  # even the right bytes, behind a link, are refused
    code, failed = run(tmp_path / "pod3", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 65 and "model/1/model.onnx" in failed["reason"] and "symbolic link" in failed["reason"]

    code, rebuilt = run(tmp_path / "b3", "build", env)
    assert code == 0 and rebuilt["result"] == "built" and not target.is_symlink()

    (root / key / "manifest.json").unlink()
    code, failed = run(tmp_path / "pod4", "fetch", {**env, "MD_ARTIFACT_KEY": key})
    assert code == 66 and "is not built" in failed["reason"]


def test_directory_store_not_mounted_is_the_platforms_problem(tmp_path: Path, linear: bytes) -> None:
    env = {**dir_env(tmp_path, linear, tmp_path / "pvc"), "MD_ARTIFACT_STORE": f"file://{tmp_path / 'not-mounted'}"}
    code, result = run(tmp_path / "b", "build", env)
    assert code == 77 and "does not exist (is the volume mounted?)" in result["reason"]


def test_int8_build_records_the_gates_numbers(tmp_path: Path) -> None:
    linear_onnx(tmp_path / "wide.onnx", features=512, classes=256)  # big enough for int8 to be faster
    root = tmp_path / "pvc"
    env = {**dir_env(tmp_path, (tmp_path / "wide.onnx").read_bytes(), root), "MD_MAX_BATCH_SIZE": "64",
           "MD_QUANTIZE": "int8", "MD_MIN_AGREEMENT": "0.9"}
    code, built = run(tmp_path / "b", "build", env)
    assert code == 0 and built["result"] == "built" and built["quantized"] is True
    gates = built["gates"]
    assert gates["samples"] == 256 and gates["origin"] == "generated inputs" and gates["agreement"] >= 0.9
    assert gates["speedup"] > 1.0 and gates["int8Seconds"] < gates["fp32Seconds"]  # the speed gate passed
    manifest = Manifest.from_json((root / built["key"] / "manifest.json").read_bytes())
    assert manifest.quantized and manifest.gates is not None and manifest.gates.to_json() == gates
    assert manifest.key_inputs["minAgreement"] == 0.9 and manifest.key_inputs["quantize"] == "int8"
    assert 'string_value: "int8"' in (root / built["key"] / "model" / "config.pbtxt").read_text()
    code, reused = run(tmp_path / "b2", "build", env)
    assert code == 0 and reused["result"] == "reused" and reused["gates"] == gates  # the build's numbers


def test_int8_build_timed_through_the_gate_triton_records_it(tmp_path: Path) -> None:
    """Issue 14 item 6: the build Job's int8 gates run through the serving image's Triton beside the
    builder (here the real CPU tritonserver 2.51 with the sidecar's own flags and the python-onnx
    backend, as on the CPU cluster), not onnxruntime in the builder; status says so."""
    # large enough that int8's gain shows through HTTP and the python backend's per-request cost
    linear_onnx(tmp_path / "wide.onnx", features=2048, classes=1024)
    root = tmp_path / "pvc"
    repo = tmp_path / "b" / "repo"  # the build's repository is the gate Triton's, as in the pod
    repo.mkdir(parents=True)
    env = {**dir_env(tmp_path, (tmp_path / "wide.onnx").read_bytes(), root), "MD_MAX_BATCH_SIZE": "32",
           "MD_QUANTIZE": "int8", "MD_MIN_AGREEMENT": "0.9", "MD_BACKEND": "python-onnx",
           "MD_RUNNER_SYS_PATH": triton_install().stub_site}
    with running_gate(repo, tmp_path / "gate-triton.log") as triton:
        gate_env = {**env, "MD_GATE_TRITON_URL": f"http://{triton.http_url}", "MD_GATE_REPOSITORY": str(repo)}
        code, built = run(tmp_path / "b", "build", gate_env)
        unloaded = [f"successfully unloaded '{n}'" for n in ("modeldeploy-gate-fp32", "modeldeploy-gate-int8")]
        deadline = time.monotonic() + 30  # Triton finishes an unload after answering the request
        while not all(u in triton.log() for u in unloaded) and time.monotonic() < deadline:
            time.sleep(0.2)
        log = triton.log()
    assert code == 0 and built["result"] == "built" and built["quantized"] is True, built
    gates = built["gates"]
    assert gates["timedBy"] == "triton"
    assert gates["samples"] == 256 and gates["origin"] == "generated inputs" and gates["agreement"] >= 0.9
    assert gates["fp32Seconds"] > 0 and gates["int8Seconds"] > 0
    assert gates["speedup"] > 1.0 and gates["int8Seconds"] < gates["fp32Seconds"]  # the speed gate passed
    # Triton itself loaded (batches of at most maxBatchSize 32: the gate's 64 went as two requests)
    # and unloaded both gate models, with the config the serving pods get
    for name in ("modeldeploy-gate-fp32", "modeldeploy-gate-int8"):
        assert f"successfully loaded '{name}'" in log and f"successfully unloaded '{name}'" in log, log[-3000:]
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["linear"]  # gate models gone
    manifest = Manifest.from_json((root / built["key"] / "manifest.json").read_bytes())
    assert manifest.gates is not None and manifest.gates.timed_by == "triton" and manifest.gates.to_json() == gates
    # the same build without the gate Triton: onnxruntime on this CPU, and the same key (the device is)
    code, reused = run(tmp_path / "b2", "build", env)
    assert code == 0 and reused["result"] == "reused" and reused["gates"]["timedBy"] == "triton"
    (tmp_path / "pvc2").mkdir()
    code, local = run(tmp_path / "b3", "build", {**env, "MD_ARTIFACT_STORE": f"file://{tmp_path / 'pvc2'}"})
    assert code == 0 and local["result"] == "built" and local["gates"]["timedBy"] == "onnxruntime-cpu"


def test_a_gate_model_the_serving_triton_cannot_load_refuses_int8(tmp_path: Path) -> None:
    """The gate's Triton is the serving image's: a model it cannot load (here a config for the
    onnxruntime backend, which this CPU Triton does not have) is refused at build time, with
    Triton's reason, rather than published for serving pods that would fail to load it."""
    linear_onnx(tmp_path / "wide.onnx", features=64, classes=16)
    root = tmp_path / "pvc"
    repo = tmp_path / "b" / "repo"
    repo.mkdir(parents=True)
    env = {**dir_env(tmp_path, (tmp_path / "wide.onnx").read_bytes(), root), "MD_MAX_BATCH_SIZE": "32",
           "MD_QUANTIZE": "int8", "MD_MIN_AGREEMENT": "0.5", "MD_BACKEND": "onnxruntime"}
    with running_gate(repo, tmp_path / "gate-triton.log") as triton:
        gate_env = {**env, "MD_GATE_TRITON_URL": f"http://{triton.http_url}", "MD_GATE_REPOSITORY": str(repo)}
        code, failed = run(tmp_path / "b", "build", gate_env)
    assert code == 1 and failed["transient"] is False, failed
    assert failed["reason"].startswith("Triton could not load the gate's model modeldeploy-gate-fp32: "), failed
    assert "onnxruntime" in failed["reason"]
    assert list(root.iterdir()) == []  # nothing published
    assert [p.name for p in repo.iterdir() if not p.name.startswith(".")] == []  # gate models removed


def test_deterministic_failures_keep_the_loaders_codes_and_store_nothing(tmp_path: Path) -> None:
    linear_onnx(tmp_path / "wide.onnx", features=512, classes=256)
    root = tmp_path / "pvc"
    env = {**dir_env(tmp_path, (tmp_path / "wide.onnx").read_bytes(), root), "MD_MAX_BATCH_SIZE": "64",
           "MD_QUANTIZE": "int8"}  # default agreement 0.99: this model's int8 agrees on 96%
    code, rejected = run(tmp_path / "gate", "build", env)
    assert code == 1 and rejected["transient"] is False and "key" in rejected
    assert rejected["reason"].startswith("int8 model rejected: agreement 0.96") and "< 0.990" in rejected["reason"]
    code, mismatch = run(tmp_path / "sha", "build", {**env, "MD_QUANTIZE": "none", "MD_SHA256": "f" * 64})
    assert code == 1 and mismatch["reason"].startswith("sha256 mismatch: want ffffffffffff")
    (tmp_path / "broken.onnx").write_bytes(b"PK\x03\x04 not an ONNX graph")
    code, broken = run(tmp_path / "fmt", "build", {**env, "MD_SOURCE_URI": f"file://{tmp_path / 'broken.onnx'}"})
    assert code == 1 and broken["reason"].startswith("not a valid ONNX model")
    assert list(root.iterdir()) == []  # nothing uploaded, nothing committed


# ---------------------------------------------------------------- the node cache seam


@contextlib.contextmanager
def static_http(root: Path) -> Iterator[str]:
    """A plain HTTP server over a directory in the store layout: the node cache agent's contract."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cache_first_and_store_when_the_cache_is_wrong_or_down(tmp_path: Path, s3: tuple[S3Server, bytes]) -> None:
    server, model = s3
    env = s3_env(server, model, "cache")
    code, built = run(tmp_path / "build", "build", env)
    key = built["key"]
    cache_root = tmp_path / "node-cache"
    store: ArtifactStore = DirStore(cache_root)
    cache_root.mkdir()
    # fill the "cache" with a verified copy (what the agent does on a miss)
    assert run(tmp_path / "fill", "fetch", {**env, "MD_ARTIFACT_KEY": key})[0] == 0
    built_dir = tmp_path / "fill" / "repo" / "linear"
    manifest = Manifest.from_json(s3_store(server).read_manifest(key) or b"")
    for rel, f in manifest.files.items():
        store.upload(key, rel, built_dir / rel, f.sha256, f.size)
    store.write_manifest(key, manifest.to_json())

    with static_http(cache_root) as url:
        code, hit = run(tmp_path / "pod1", "fetch", {**env, "MD_ARTIFACT_KEY": key, "MD_ARTIFACT_CACHE_URL": url})
        assert code == 0 and hit["fromCache"] == 2 and hit["retried"] == []
        (cache_root / key / "model" / "1" / "model.onnx").write_bytes(b"\x00" * len(model))  # a bad cache copy
        code, bad = run(tmp_path / "pod2", "fetch", {**env, "MD_ARTIFACT_KEY": key, "MD_ARTIFACT_CACHE_URL": url})
        assert code == 0 and bad["retried"] == ["1/model.onnx"] and bad["fromCache"] == 1  # config.pbtxt
        assert (tmp_path / "pod2" / "repo" / "linear" / "1" / "model.onnx").read_bytes() == model
    down = f"http://127.0.0.1:{free_port()}"
    code, miss = run(tmp_path / "pod3", "fetch", {**env, "MD_ARTIFACT_KEY": key, "MD_ARTIFACT_CACHE_URL": down})
    assert code == 0 and miss["fromCache"] == 0
    assert tree(tmp_path / "pod3" / "repo" / "linear") == tree(tmp_path / "pod1" / "repo" / "linear")
    assert store_env({"MD_STORE_AWS_REGION": "r", "AWS_REGION": "x"}) == {"AWS_REGION": "r"}


class _RacingStore(DirStore):
    """A real directory store in which another builder writes one file right after our manifest:
    the interleaving in which two builders with different bytes for one key could mix them."""

    def __init__(self, root: Path, other: Path, rel: str) -> None:
        super().__init__(root)
        self.other, self.rel, self.raced = other, rel, False

    def write_manifest(self, key: str, data: bytes) -> None:
        super().write_manifest(key, data)
        if not self.raced:
            self.raced = True
            data_other = (self.other / self.rel).read_bytes()
            super().upload(key, self.rel, self.other / self.rel, hashlib.sha256(data_other).hexdigest(),
                           len(data_other))


def test_publish_repairs_a_mix_of_two_builders(tmp_path: Path) -> None:
    from modeldeploy.artifact.manifest import manifest_for, verify
    from modeldeploy.artifact.transfer import download_artifact, publish

    key = "linear-" + "1" * 32
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d, text in ((ours, "ours"), (theirs, "theirs")):  # a builder whose bytes are not deterministic
        (d / "1").mkdir(parents=True)
        (d / "1" / "model.onnx").write_text(f"model built by {text}")
        (d / "config.pbtxt").write_text('name: "linear"\n')
    (tmp_path / "store").mkdir()
    store = _RacingStore(tmp_path / "store", theirs, "1/model.onnx")
    published = publish(store, key, ours, manifest_for(ours, key=key, model_name="linear"))
    assert store.raced and published.uploaded == 3  # two files, then the raced one again
    assert stored_problems(store, key, published.manifest) == []
    download_artifact(store, key, published.manifest, tmp_path / "check")
    assert verify(tmp_path / "check", published.manifest) == []
