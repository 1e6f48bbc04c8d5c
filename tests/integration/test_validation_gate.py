"""The canary validation gate for real: the Job's command and environment against a real Triton and MinIO.

A CNN is trained on scikit-learn's digits, written into a model repository by the loader and served
by a real tritonserver; the held-out split is the labelled dataset, stored in MinIO behind a
credentialsSecret. `python -m modeldeploy.loader.validate` runs as a subprocess with the command and
environment `build_validation_job` puts into the Job (secretKeyRefs resolved from the "Secret" the
way the kubelet would; only the in-cluster Service URLs and the termination-log path are replaced),
so the builder and the CLI are checked together. Its termination message then goes through the
operator's own reader (`verdict_from_job`). No mocks.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localcluster.process import free_port
from modeldeploy import api
from modeldeploy.loader.cli import main as loader_main
from modeldeploy.resources import Images
from modeldeploy.resources.validation_job import COMMAND, build_validation_job
from modeldeploy.validation import verdict_from_job
from tests.support import serving, serving_digits
from tests.support.serving_http import FileServer
from tests.support.serving_http import serving as http_serving
from tests.support.serving_s3 import S3Server, running_minio

pytestmark = pytest.mark.integration
MODEL = "digits"
MAX_BATCH = 32
SECRET = "dataset-creds"
BUCKET = "datasets"
DATASET_KEY = "digits/validation.npz"
IMAGES = Images(serving="localhost/modeldeploy-triton-cpu:dev", loader="localhost/modeldeploy-operator:dev",
                converter="localhost/modeldeploy-converter:dev", serving_backend="python-onnx")


@dataclass
class Gate:
    server: serving.TritonServer
    s3: S3Server
    files: FileServer
    data: serving_digits.Digits
    dataset: Path
    work: Path

    @property
    def samples(self) -> int:
        return len(self.data.y_test)


@dataclass
class Run:
    code: int
    result: dict[str, Any]
    termination: str
    stdout: str
    stderr: str
    seconds: float


def _repository(work: Path, model: Any, dataset: Path) -> Path:
    """The loader writes `model` (TorchScript) as Triton model MODEL, as the init container would."""
    work.mkdir(parents=True, exist_ok=True)
    ts = serving_digits.save_torchscript(model, work / "digits.pt")
    term = work / "loader.termination-log"
    code = loader_main([], {
        "MD_SOURCE_URI": f"file://{ts}", "MD_FORMAT": "torchscript", "MD_MODEL_NAME": MODEL,
        "MD_REPOSITORY": str(work / "repo"), "MD_TERMINATION_LOG": str(term), "MD_BACKEND": "python-onnx",
        "MD_RUNNER_SYS_PATH": serving.triton_install().stub_site, "MD_MAX_BATCH_SIZE": str(MAX_BATCH),
        "MD_WARMUP": "false", "MD_VALIDATION_URI": f"file://{dataset}"})
    assert code == 0, term.read_text() if term.exists() else code
    return work / "repo"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    work = tmp_path_factory.mktemp("gate")
    data = serving_digits.load_digits()
    dataset = serving_digits.save_validation(data, work / "validation.npz")
    repo = _repository(work, serving_digits.train_cnn(data, width=16, epochs=6), dataset)
    with running_minio(work) as s3, http_serving(FileServer()) as files, \
            serving.running(repo, work / "triton.log") as server:
        s3.create_bucket(BUCKET)
        s3.put(BUCKET, DATASET_KEY, dataset.read_bytes())
        files.files["/validation.npz"] = dataset.read_bytes()
        yield Gate(server, s3, files, data, dataset, work)


def _spec(validation: dict[str, Any]) -> api.ModelDeploymentSpec:
    return api.parse_spec({
        "model": {"name": MODEL, "source": {"uri": "s3://models/digits.pt", "credentialsSecret": SECRET},
                  "format": "torchscript", "maxBatchSize": MAX_BATCH},
        "serving": {"gpus": 0},
        "rollout": {"strategy": "Canary", "validation": validation},
    }, name=MODEL)


def _job_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: values, and secretKeyRefs from the Secret."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"{item['name']}: required key {ref['key']} missing from {ref['name']}"
    return env


def run_gate(gate: Gate, tmp_path: Path, validation: dict[str, Any], canary_url: str | None = None,
             stable_url: str | None = None, **override: str) -> Run:
    """Build the Job, then run its container's command with its environment against the local servers."""
    job = build_validation_job(MODEL, "ml", "uid-1", _spec(validation), "abc1234567", "def7654321", IMAGES)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == list(COMMAND)
    env = _job_env(container, {SECRET: gate.s3.env()})
    assert env["MD_CANARY_URL"] == "http://digits-canary.ml.svc:8000"
    # In-cluster Service names do not resolve here: point them at the local Triton; same for /tmp and the log.
    env["MD_CANARY_URL"] = canary_url or f"http://{gate.server.http_url}"
    if "MD_STABLE_URL" in env:
        assert env["MD_STABLE_URL"] == "http://digits-stable.ml.svc:8000"
        env["MD_STABLE_URL"] = stable_url or f"http://{gate.server.http_url}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    term = tmp_path / "termination-log"
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), MD_TERMINATION_LOG=str(term), PATH=os.environ["PATH"],
               MD_FETCH_ATTEMPTS="2", **override)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *container["command"][1:]], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    seconds = time.monotonic() - started
    termination = term.read_text() if term.exists() else ""
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    assert termination.strip() == last, (termination, proc.stdout, proc.stderr)
    for secret in (gate.s3.secret_key, gate.s3.access_key):
        assert secret not in proc.stdout + proc.stderr + termination
    return Run(proc.returncode, json.loads(last), termination, proc.stdout, proc.stderr, seconds)


def _requests(server: serving.TritonServer) -> tuple[float, float]:
    """(successful requests, inferences) of the model: to see how the gate batched."""
    text = server.metrics()

    def metric(name: str) -> float:
        pattern = rf'^{name}{{[^}}]*model="{MODEL}"[^}}]*}} ([0-9.e+]+)$'
        return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))

    return metric("nv_inference_request_success"), metric("nv_inference_count")


def _as_operator_sees_it(run: Run, job_failed: bool) -> tuple[bool, str] | None:
    """The termination message through the operator's reader, as a finished Job and its pod present it."""
    job = {"status": {"conditions": [{"type": "Failed" if job_failed else "Complete", "status": "True"}]}}
    pod = {"metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"},
           "status": {"containerStatuses": [{"name": "validate", "state": {
               "terminated": {"exitCode": run.code, "message": run.termination}}}]}}
    return verdict_from_job(job, [pod])


def test_good_model_passes(gate: Gate, tmp_path: Path) -> None:
    before = _requests(gate.server)
    run = run_gate(gate, tmp_path, {"datasetUri": f"s3://{BUCKET}/{DATASET_KEY}", "minAccuracy": 0.9})
    after = _requests(gate.server)
    print(f"\ngate passed in {run.seconds:.1f}s: {run.result['message']}")
    assert run.code == 0, run.stderr
    assert run.result["passed"] is True and run.result["accuracy"] > 0.9
    assert run.result["samples"] == gate.samples and run.result["agreement"] is None
    assert re.match(r"accuracy 0\.9\d+ >= 0\.9 \(\d+/\d+ correct\)$", run.result["message"])
    # every sample answered once, in requests of at most the model's max batch size
    assert after[1] - before[1] == gate.samples
    assert after[0] - before[0] == math.ceil(gate.samples / MAX_BATCH)
    assert _as_operator_sees_it(run, job_failed=False) == (True, run.result["message"])


def test_threshold_not_met_fails_with_exit_1(gate: Gate, tmp_path: Path) -> None:
    run = run_gate(gate, tmp_path, {"datasetUri": f"s3://{BUCKET}/{DATASET_KEY}", "minAccuracy": 0.999})
    assert run.code == 1, run.stderr
    assert run.result["passed"] is False and run.result["accuracy"] < 0.999
    assert "< 0.999" in run.result["message"], run.result
    passed, message = _as_operator_sees_it(run, job_failed=True) or (None, "")
    assert passed is False and message.startswith("accuracy ") and "< 0.999" in message


def test_unreachable_canary_is_an_error_with_exit_2(gate: Gate, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    run = run_gate(gate, tmp_path, {"datasetUri": f"s3://{BUCKET}/{DATASET_KEY}", "minAccuracy": 0.9},
                   canary_url=f"http://127.0.0.1:{port}", MD_READY_TIMEOUT_SECONDS="2")
    assert run.code == 2, run.stderr
    assert run.result["passed"] is False and run.result.get("error") is True
    assert run.result["message"].startswith(f"canary unreachable at http://127.0.0.1:{port} after 2s"), run.result
    assert _as_operator_sees_it(run, job_failed=True) == (False, run.result["message"])


def test_agreement_with_the_same_server_is_total(gate: Gate, tmp_path: Path) -> None:
    run = run_gate(gate, tmp_path, {"datasetUri": f"s3://{BUCKET}/{DATASET_KEY}", "minAccuracy": 0.9,
                                    "minAgreement": 0.99})
    assert run.code == 0, run.stderr
    assert run.result["agreement"] == 1.0 and run.result["accuracy"] > 0.9
    assert f"agreement with stable 1.000 >= 0.99 ({gate.samples}/{gate.samples} equal)" in run.result["message"]


def test_missing_dataset_is_an_error_with_exit_2(gate: Gate, tmp_path: Path) -> None:
    """Over plain HTTP this time (no credentials needed): a 404 says what could not be fetched."""
    run = run_gate(gate, tmp_path, {"datasetUri": gate.files.url("/nope.npz"), "minAccuracy": 0.9})
    assert run.code == 2, run.stderr
    assert run.result["message"].startswith("cannot fetch dataset: HTTP 404"), run.result
    ok = run_gate(gate, tmp_path / "http", {"datasetUri": gate.files.url("/validation.npz"), "minAccuracy": 0.9})
    assert ok.code == 0 and ok.result["samples"] == gate.samples


def test_agreement_with_a_different_stable_model_fails(gate: Gate, tmp_path: Path) -> None:
    """A stable revision that answers differently (an undertrained model under the same name) disagrees."""
    weak = serving_digits.train_cnn(gate.data, width=4, epochs=1, seed=1)
    repo = _repository(tmp_path / "weak", weak, gate.dataset)
    with serving.running(repo, tmp_path / "weak-triton.log") as stable:
        run = run_gate(gate, tmp_path / "run", {"datasetUri": f"s3://{BUCKET}/{DATASET_KEY}", "minAgreement": 0.99},
                       stable_url=f"http://{stable.http_url}")
    print(f"\nagainst a weak stable model: {run.result['message']}")
    assert run.code == 1, run.stderr
    assert run.result["passed"] is False and run.result["agreement"] < 0.99
    assert "agreement with stable" in run.result["message"] and "< 0.99" in run.result["message"]
