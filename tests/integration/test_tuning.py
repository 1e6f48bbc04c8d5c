"""Deploy-time tuning against the real Triton (issue 18). No mocks.

The build runs exactly as in the build Job: `python -m modeldeploy.artifact build` (here in this
process) beside the real CPU tritonserver 2.51 started with the sidecar's own flags
(tests/support/serving.running_gate: explicit model control, loopback HTTP), the python-onnx
backend as on the CPU cluster, the digits CNN (trained in seconds on scikit-learn's digits) as the
model, its held-out split as the validation data.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modeldeploy.artifact.cli import main
from modeldeploy.artifact.manifest import Manifest
from modeldeploy.loader.convert import convert
from modeldeploy.loader.gate_triton import TritonHTTP, TritonSession
from modeldeploy.loader.settings import InputShape
from modeldeploy.planning import build as b
from modeldeploy.planning import tuning
from tests.support.serving import TritonServer, running_gate, triton_install
from tests.support.serving_digits import load_digits, save_torchscript, save_validation, train_cnn

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class World:
    triton: TritonServer
    repo: Path  # the build's repository, which is the Triton's (as in the build pod)
    model: Path  # digits ONNX
    validation: Path  # x, y of the held-out split
    work: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("tuning")
    data = load_digits()
    ts = save_torchscript(train_cnn(data, epochs=3), work / "digits.pt")
    onnx = convert(ts, "torchscript", work / "digits.onnx", 8, (InputShape("x", "float32", (1, 8, 8)),))
    validation = save_validation(data, work / "val.npz")
    repo = work / "repo"
    repo.mkdir()
    with running_gate(repo, work / "triton.log") as triton:
        yield World(triton, repo, onnx, validation, work)


def env(w: World, store: Path, tune: dict | None, **extra: str) -> dict[str, str]:
    """What the build Job's container gets (resources/build_job.build_env), for a directory store."""
    store.mkdir(parents=True, exist_ok=True)
    out = {"MD_ARTIFACT_STORE": f"file://{store}", "MD_SOURCE_URI": f"file://{w.model}", "MD_MODEL_NAME": "digits",
           "MD_MAX_BATCH_SIZE": "8", "MD_VALIDATION_URI": f"file://{w.validation}", "MD_BACKEND": "python-onnx",
           "MD_RUNNER_SYS_PATH": triton_install().stub_site, "MD_REPOSITORY": str(w.repo),
           "MD_GATE_TRITON_URL": f"http://{w.triton.http_url}", "MD_GATE_REPOSITORY": str(w.repo),
           "MD_ARTIFACT_HARDWARE": "gpu=none;cpu=2;memory=2Gi", **extra}
    if tune is not None:
        out["MD_TUNE"] = json.dumps({"cpus": 2, **tune})
    return out


def build(w: World, name: str, environment: dict[str, str]) -> tuple[int, dict]:
    term = w.work / f"{name}.termination-log"
    code = main(["build"], {**environment, "MD_TERMINATION_LOG": str(term)})
    return code, json.loads(term.read_text())


def serve_as(w: World, artifact: Path, name: str) -> None:
    """An artifact's model directory under another name in the Triton's repository, loaded."""
    dest = w.repo / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(artifact / "model", dest)
    config = dest / "config.pbtxt"
    config.write_text(re.sub(r'^name: "digits"', f'name: "{name}"', config.read_text(), count=1, flags=re.M))
    TritonHTTP(f"http://{w.triton.http_url}").load(name)


def answers(w: World, name: str, x: np.ndarray) -> np.ndarray:
    client = TritonHTTP(f"http://{w.triton.http_url}")
    try:
        return TritonSession(client, name, 8).run(["output_0"], {"x": x})[0]
    finally:
        client.close()


def test_a_real_sweep_picks_a_config_in_its_budget_and_keeps_the_answers(world: World,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    budget = 45.0
    code, built = build(world, "tuned", env(world, world.work / "store", {"budgetSeconds": budget}))
    log = capfd.readouterr().err
    assert code == 0 and built["result"] == "built", built
    t = built["tuning"]
    # the sweep measured several candidates, inside its budget, and the full table is in the build log
    assert t["seconds"] <= budget and t["budgetSeconds"] == budget
    assert t["candidates"] >= 3
    assert len(re.findall(r"tuning \| +\d+ +mbs=", log)) == t["candidates"], log[-3000:]
    # never worse than the default, at the same concurrency
    assert t["default"]["concurrency"] == t["tuned"]["concurrency"]
    if not t["isDefault"]:
        assert t["tuned"]["throughput"] > t["default"]["throughput"]
        assert t["tuned"]["p99Ms"] <= t["default"]["p99Ms"] * 1.1
    # the artifact's config.pbtxt is the chosen one, the manifest keeps every candidate
    stored = world.work / "store" / built["key"]
    manifest = Manifest.from_json((stored / "manifest.json").read_bytes())
    assert manifest.tuning is not None and len(manifest.tuning["measured"]) == t["candidates"]
    assert manifest.key_inputs["tune"]["budgetSeconds"] == budget
    assert manifest.key_inputs["tuneHardware"] == "gpu=none;cpu=2;memory=2Gi"
    config = (stored / "model" / "config.pbtxt").read_text()
    settings = t["settings"]
    assert f"max_batch_size: {settings['maxBatchSize']}" in config
    assert ("dynamic_batching {" in config) == ("dynamicBatching" in settings)
    assert f"count: {settings['instances']}" in config
    # scratch models are gone from Triton's repository
    assert not [p.name for p in world.repo.iterdir() if p.name.startswith("modeldeploy-tune")]

    # the same model built without tuning is the default; both served by Triton answer the same
    code, plain = build(world, "plain", env(world, world.work / "store-plain", None))
    assert code == 0 and "tuning" not in plain
    serve_as(world, stored, "digits-tuned")
    serve_as(world, world.work / "store-plain" / plain["key"], "digits-default")
    with np.load(world.validation) as npz:
        x, y = npz["x"], npz["y"]
    tuned, default = answers(world, "digits-tuned", x), answers(world, "digits-default", x)
    assert np.array_equal(tuned.argmax(axis=1), default.argmax(axis=1))
    assert np.allclose(tuned, default, rtol=1e-3, atol=1e-5)
    assert (tuned.argmax(axis=1) == y).mean() > 0.85  # and they are the model's answers

    # the python-onnx runner takes onnxruntime's thread settings from config.pbtxt as the native
    # backend does (the CPU candidates' intra-/inter-op threads): a setting it cannot apply fails the load
    threads = world.work / "threads"
    shutil.copytree(world.work / "store-plain" / plain["key"], threads)
    with (threads / "model" / "config.pbtxt").open("a") as f:
        for key, value in (("intra_op_thread_count", "1"), ("inter_op_thread_count", "2"), ("execution_mode", "1")):
            f.write(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n')
    serve_as(world, threads, "digits-threads")
    assert np.allclose(answers(world, "digits-threads", x), default, rtol=1e-3, atol=1e-5)

    # a second build of the same model, tune settings and hardware class reuses it: no new sweep
    code, again = build(world, "again", env(world, world.work / "store", {"budgetSeconds": budget}))
    log = capfd.readouterr().err
    assert code == 0 and again["result"] == "reused" and again["key"] == built["key"]
    assert again["tuning"] == t and "tuning: candidate" not in log


def test_a_too_tight_bound_serves_the_best_with_the_documented_condition(world: World) -> None:
    code, built = build(world, "tight", env(world, world.work / "store-tight",
                                            {"budgetSeconds": 15, "maxP99Ms": 0.01, "concurrency": [1, 4]}))
    assert code == 0 and built["result"] == "built", built
    t = built["tuning"]
    assert t["boundMet"] is False and t["maxP99Ms"] == 0.01
    assert t["message"].startswith("no configuration met maxP99 0.01ms: the best (")
    assert re.search(r"lowest p99 \d+\.\dms at concurrency \d+, after \d+ candidates in \d+s of a 15s budget",
                     t["message"]), t["message"]
    # what status shows: the record the operator keeps, and the Tuned condition from it
    record = b.artifact_record(built)
    status, reason, message = tuning.condition(True, b.BuildState(b.Reason.BUILT, "", artifact=record), "r1") or (
        None, "", "")
    assert (status, reason) == (False, "LatencyBoundNotMet")
    assert "no configuration met maxP99 0.01ms" in message and "serving the closest" in message
    assert f"vs the default's {t['default']['throughput']:g}/s p99 {t['default']['p99Ms']:g}ms" in message


def test_a_too_tight_bound_fails_the_build_when_asked(world: World) -> None:
    code, failed = build(world, "fail", env(world, world.work / "store-fail",
                                            {"budgetSeconds": 12, "maxP99Ms": 0.01, "concurrency": [1],
                                             "onBoundMiss": "Fail"}))
    assert code == 1 and failed["result"] == "failed" and failed["transient"] is False
    assert failed["reason"].startswith("tuning: no configuration met maxP99 0.01ms"), failed
    assert failed["reason"].endswith("(onBoundMiss: Fail)")
    assert not list((world.work / "store-fail").iterdir())  # nothing stored
