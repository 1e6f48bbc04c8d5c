"""The canary validation gate without a cluster or a server: the Job builder, the CLI's judging, the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modeldeploy import api
from modeldeploy import constants as c
from modeldeploy.loader import validate as v
from modeldeploy.resources import Images, build_deployment
from modeldeploy.resources import deployment as dep_mod
from modeldeploy.resources import validation_job as vj
from modeldeploy.validation import parse_result, verdict_from_job
from tests.integration.invalid_specs import BASE_SPEC, apply_patch

UID = "0b8c1f5e-3d7a-4f3e-9a51-6a1c2f0e9b11"
IMAGES = Images(serving="registry.local/triton:1", loader="registry.local/loader:1",
                converter="registry.local/converter:1", serving_backend="python-onnx")
VALIDATION = {"datasetUri": "s3://datasets/digits/validation.npz", "minAccuracy": 0.95}


def _spec(validation: dict[str, Any] | None = None, patch: dict[str, Any] | None = None) -> api.ModelDeploymentSpec:
    body = apply_patch(BASE_SPEC, {"rollout": {"validation": validation or VALIDATION}, **(patch or {})})
    return api.parse_spec(body, name="digits")


def _job(validation: dict[str, Any] | None = None, patch: dict[str, Any] | None = None,
         name: str = "digits") -> dict[str, Any]:
    return vj.build_validation_job(name, "ml", UID, _spec(validation, patch), "abc1234567", "def7654321", IMAGES)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(job)["env"]}


# ---------------------------------------------------------------- the Job


def test_job_metadata_owner_and_labels() -> None:
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == ("digits-validate-abc1234567", "ml")
    assert meta["ownerReferences"] == [{"apiVersion": c.API_VERSION, "kind": c.KIND, "name": "digits", "uid": UID,
                                        "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][c.LABEL_NAME] == "digits"
    assert meta["labels"][c.LABEL_REVISION] == "abc1234567"
    assert meta["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY
    assert meta["annotations"][vj.ANNOTATION_STABLE] == "def7654321"


def test_job_pod_is_never_taken_for_a_serving_pod() -> None:
    """Services, the PDB, the autoscaler and observe.py select serving pods by name/revision labels."""
    pod_labels = _job()["spec"]["template"]["metadata"]["labels"]
    assert c.LABEL_NAME not in pod_labels and c.LABEL_REVISION not in pod_labels


def test_job_runs_once_and_cleans_up() -> None:
    spec = _job()["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == vj.TTL_AFTER_FINISHED_S
    assert spec["activeDeadlineSeconds"] == vj.ACTIVE_DEADLINE_S
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podFailurePolicy"]["rules"][0]["onPodConditions"] == [{"type": "DisruptionTarget"}]


def test_job_security_is_the_deployments() -> None:
    """Pod Security "restricted", from the same helpers as the serving pods."""
    deployment = build_deployment("digits", "ml", UID, _spec(), "abc1234567", 1, IMAGES, "canary")
    dep_pod = deployment["spec"]["template"]["spec"]
    pod = _job()["spec"]["template"]["spec"]
    assert pod["securityContext"] == dep_pod["securityContext"] == dep_mod._pod_security()
    assert _container(_job())["securityContext"] == dep_mod._container_security()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = _container(_job())
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": vj.VOLUME_TMP, "mountPath": "/tmp"} in container["volumeMounts"]


def test_job_container_image_command_and_resources() -> None:
    container = _container(_job())
    assert container["image"] == IMAGES.loader
    assert container["command"] == ["python", "-m", "modeldeploy.loader.validate"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert set(container["resources"]) == {"requests", "limits"}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_job_env_accuracy_only_has_no_stable_url() -> None:
    env = _env(_job())
    assert env["MD_DATASET_URI"] == VALIDATION["datasetUri"]
    assert env["MD_MODEL_NAME"] == "digits"
    assert env["MD_CANARY_URL"] == "http://digits-canary.ml.svc:8000"
    assert env["MD_MIN_ACCURACY"] == "0.95"
    assert "MD_STABLE_URL" not in env and "MD_MIN_AGREEMENT" not in env


def test_job_env_agreement_adds_the_stable_url() -> None:
    env = _env(_job({"datasetUri": "https://data.example/v.npz", "minAgreement": 0.99}))
    assert env["MD_STABLE_URL"] == "http://digits-stable.ml.svc:8000"
    assert env["MD_MIN_AGREEMENT"] == "0.99"
    assert env["MD_STABLE_REVISION"] == "def7654321"
    assert "MD_MIN_ACCURACY" not in env


def test_job_credentials_by_reference_exactly_as_the_loader() -> None:
    job = _job()
    creds = [e for e in _container(job)["env"] if "valueFrom" in e]
    deployment = build_deployment("digits", "ml", UID, _spec(), "abc1234567", 1, IMAGES, "canary")
    loader = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert creds == [e for e in loader["env"] if "valueFrom" in e]
    assert [e["name"] for e in creds] == list(dep_mod.CREDENTIAL_KEYS)
    assert all(e["valueFrom"]["secretKeyRef"]["name"] == "s3-creds" for e in creds)
    assert all("value" not in e for e in creds)
    assert "Secret" not in json.dumps(job)  # never a Secret object or volume, only key references


def test_job_without_credentials_has_no_secret_refs() -> None:
    job = _job(patch={"model": {"source": {"uri": "https://models.example/m.onnx", "credentialsSecret": None}}})
    assert "secretKeyRef" not in json.dumps(job)


def test_job_pvc_dataset_mounts_the_claim_read_only() -> None:
    job = _job({"datasetUri": "pvc://datasets/digits/v.npz", "minAccuracy": 0.9})
    pod = job["spec"]["template"]["spec"]
    assert {"name": vj.VOLUME_DATASET, "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} \
        in pod["volumes"]
    assert {"name": vj.VOLUME_DATASET, "mountPath": c.SOURCE_MOUNT_PATH, "readOnly": True} \
        in _container(job)["volumeMounts"]
    assert _env(job)["MD_SOURCE_MOUNT"] == c.SOURCE_MOUNT_PATH


def test_job_name_fits_63_characters() -> None:
    long_a, long_b = "a" * 50 + "-model", "a" * 50 + "-other"  # 56 characters, same 36-character prefix
    name_a, name_b = vj.job_name(long_a, "abc1234567"), vj.job_name(long_b, "abc1234567")
    assert len(name_a) <= 63 and len(name_b) <= 63
    assert name_a != name_b
    assert name_a.endswith("-validate-abc1234567")
    assert _job(name=long_a)["metadata"]["name"] == name_a
    assert vj.job_name("digits", "abc1234567") == "digits-validate-abc1234567"
    assert "--" not in vj.job_name("a" * 35 + "-" + "b" * 20, "abc1234567")  # a cut at a dash is trimmed


def test_job_is_deterministic_and_fingerprint_follows_thresholds() -> None:
    assert _job() == _job()
    assert vj.fingerprint(_spec()) == vj.fingerprint(_spec())
    assert vj.fingerprint(_spec()) != vj.fingerprint(_spec({**VALIDATION, "minAccuracy": 0.9}))


def test_job_needs_a_validation_spec() -> None:
    spec = api.parse_spec(BASE_SPEC, name="digits")
    with pytest.raises(ValueError, match="validation"):
        vj.build_validation_job("digits", "ml", UID, spec, "abc1234567", "def7654321", IMAGES)


# ---------------------------------------------------------------- the CLI's pure parts


def test_batches_respect_the_max_batch_size() -> None:
    assert v.batch_slices(70, 32) == [slice(0, 32), slice(32, 64), slice(64, 70)]
    assert v.batch_slices(200, 4096) == [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 200)]
    assert v.batch_slices(3, 0) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # no batch axis: one per request
    assert v.batch_slices(0, 8) == []


def test_predictions_argmax_or_class_ids() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5]], dtype=np.float32)
    assert v.predictions(logits).tolist() == [1, 0]
    assert v.predictions(np.array([[3], [1]], dtype=np.int64)).tolist() == [3, 1]
    assert v.predictions(np.zeros((2, 1, 4))).shape == (2,)


def test_judge_accuracy_message_and_threshold() -> None:
    ok = v.judge(360, 352, None, 0.95, None)
    assert ok.passed and ok.accuracy == pytest.approx(352 / 360)
    assert ok.message == "accuracy 0.978 >= 0.95 (352/360 correct)"
    bad = v.judge(360, 352, None, 0.999, None)
    assert not bad.passed and bad.message.startswith("accuracy 0.978 < 0.999")


def test_judge_never_prints_a_fail_as_equal() -> None:
    """0.9989 must not show as "0.999 < 0.999"."""
    verdict = v.judge(10000, 9989, None, 0.999, None)
    assert not verdict.passed and verdict.message.startswith("accuracy 0.9989 < 0.999")
    assert v.judge(1000, 999, None, 0.999, None).passed


def test_judge_agreement_and_both() -> None:
    both = v.judge(200, 190, 200, 0.9, 0.99)
    assert both.passed and both.agreement == 1.0
    assert "agreement with stable 1.000 >= 0.99 (200/200 equal)" in both.message
    fails = v.judge(200, 190, 150, 0.9, 0.99)
    assert not fails.passed and "agreement with stable 0.750 < 0.99" in fails.message
    only_agreement = v.judge(200, 190, 199, None, 0.99)
    assert only_agreement.passed and "accuracy 0.950 (190/200 correct)" in only_agreement.message
    with pytest.raises(v.ValidationError):
        v.judge(200, None, None, 0.9, None)


def test_verdict_json_line() -> None:
    line = v.judge(360, 352, 360, 0.95, 0.99).to_json()
    data = json.loads(line)
    assert data == {"passed": True, "accuracy": round(352 / 360, 6), "agreement": 1.0, "samples": 360,
                    "message": data["message"]}
    assert "\n" not in line
    err = json.loads(v.error_json("canary unreachable"))
    assert err["passed"] is False and err["error"] is True and err["message"] == "canary unreachable"


def test_settings_from_env() -> None:
    env = {"MD_DATASET_URI": "s3://b/k.npz", "MD_MODEL_NAME": "digits", "MD_CANARY_URL": "http://d-canary.ml.svc:8000",
           "MD_MIN_ACCURACY": "0.9"}
    s = v.settings_from_env(env)
    assert s.canary == v.Endpoint("http://d-canary.ml.svc:8000", "d-canary.ml.svc:8000", False)
    assert s.stable is None and s.min_accuracy == 0.9 and s.min_agreement is None
    with pytest.raises(v.ConfigError, match="MD_STABLE_URL"):
        v.settings_from_env({**env, "MD_MIN_AGREEMENT": "0.99"})
    with pytest.raises(v.ConfigError, match="MD_MIN_ACCURACY"):
        v.settings_from_env({**env, "MD_MIN_ACCURACY": "1.5"})
    with pytest.raises(v.ConfigError, match="nothing to judge"):
        v.settings_from_env({k: val for k, val in env.items() if k != "MD_MIN_ACCURACY"})
    with pytest.raises(v.ConfigError, match="MD_CANARY_URL is required"):
        v.settings_from_env({k: val for k, val in env.items() if k != "MD_CANARY_URL"})
    assert v.parse_endpoint("X", "https://triton.example").host_port == "triton.example:443"


def test_settings_from_the_builders_env() -> None:
    """The builder and the CLI agree on names: the Job's plain values parse as they are."""
    env = {e["name"]: e["value"] for e in _container(_job({**VALIDATION, "minAgreement": 0.98}))["env"]
           if "value" in e}
    s = v.settings_from_env(env)
    assert (s.min_accuracy, s.min_agreement) == (0.95, 0.98)
    assert s.stable is not None and s.stable.host_port == "digits-stable.ml.svc:8000"
    assert s.revision == "abc1234567" and s.stable_revision == "def7654321"


def _info(max_batch: int = 32) -> v.ModelInfo:
    metadata = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
                "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}]}
    return v.model_info(metadata, {"max_batch_size": max_batch})


def test_dataset_checked_against_the_model(tmp_path: Path) -> None:
    x, y = np.zeros((5, 1, 8, 8), dtype=np.float64), np.arange(5)
    data = v.dataset_for({"x": x, "y": y}, _info())
    assert data.inputs["input"].dtype == np.float32 and data.samples == 5
    assert data.labels is not None and data.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(v.ValidationError, match="sample shape"):
        v.dataset_for({"x": np.zeros((5, 8, 8))}, _info())
    with pytest.raises(v.ValidationError, match="no array for input"):
        v.dataset_for({"z": x}, _info())
    with pytest.raises(v.ValidationError, match="same number of samples"):
        v.dataset_for({"x": x, "y": np.arange(4)}, _info())
    with pytest.raises(v.ValidationError, match="integer class ids"):
        v.dataset_for({"x": x, "y": np.full(5, 0.5)}, _info())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(v.ValidationError, match=r"not an \.npz file"):
        v.read_npz(bad)


def test_cli_error_line_is_redacted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failure before any network use still leaves one JSON line, and no secret in it."""
    term = tmp_path / "termination-log"
    env = {"MD_DATASET_URI": "https://user:hunter2secret@data.example/v.npz?X-Amz-Signature=abcdef123",
           "MD_MODEL_NAME": "digits", "MD_CANARY_URL": "http://c:8000", "MD_MIN_ACCURACY": "2",
           "AWS_SECRET_ACCESS_KEY": "verysecretkey", "MD_TERMINATION_LOG": str(term)}
    assert v.main([], env) == v.EXIT_ERROR
    line = term.read_text().strip()
    data = json.loads(line)
    assert data["passed"] is False and "MD_MIN_ACCURACY" in data["message"]
    out = capsys.readouterr()
    for secret in ("hunter2secret", "abcdef123", "verysecretkey"):
        assert secret not in out.out + out.err + line


# ---------------------------------------------------------------- the operator's reading of a finished Job


def _finished(kind: str | None, reason: str = "", message: str = "") -> dict[str, Any]:
    conditions = [{"type": kind, "status": "True", "reason": reason, "message": message}] if kind else []
    return {"metadata": {"name": "digits-validate-abc1234567"}, "status": {"conditions": conditions}}


def _pod(terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None,
         created: str = "2025-01-01T00:00:00Z") -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"waiting": waiting or {}}
    return {"metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"name": vj.CONTAINER, "state": state}]}}


def test_verdict_none_while_running() -> None:
    assert verdict_from_job(_finished(None), []) is None
    # the Job controller's interim conditions are not terminal
    assert verdict_from_job(_finished("FailureTarget"), [_pod({"exitCode": 1})]) is None


def test_verdict_from_the_termination_message() -> None:
    passed = v.judge(360, 352, None, 0.95, None).to_json()
    assert verdict_from_job(_finished("Complete"), [_pod({"exitCode": 0, "message": passed + "\n"})]) == \
        (True, "accuracy 0.978 >= 0.95 (352/360 correct)")
    failed = v.judge(360, 352, None, 0.999, None).to_json()
    ok, message = verdict_from_job(_finished("Failed", "BackoffLimitExceeded"),
                                   [_pod({"exitCode": 1, "message": failed})]) or (None, "")
    assert ok is False and message.startswith("accuracy 0.978 < 0.999")


def test_verdict_from_logs_fallback() -> None:
    """FallbackToLogsOnError: the message is the log tail; the JSON is its last line."""
    logs = "validate: fetching s3://b/k\nvalidate: error: canary unreachable\n" + v.error_json("canary unreachable")
    assert verdict_from_job(_finished("Failed"), [_pod({"exitCode": 2, "message": logs})]) == \
        (False, "canary unreachable")


def test_verdict_without_json() -> None:
    deadline = _finished("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    ok, message = verdict_from_job(deadline, [_pod(waiting={"reason": "ImagePullBackOff",
                                                            "message": "Back-off pulling image"})]) or (None, "")
    assert ok is False
    assert message == ("validation job failed: DeadlineExceeded (Job was active longer than specified deadline); "
                       "pod: ImagePullBackOff: Back-off pulling image")
    oom = verdict_from_job(_finished("Failed", "BackoffLimitExceeded"),
                           [_pod({"exitCode": 137, "reason": "OOMKilled"})])
    assert oom == (False, "validation job failed (OOMKilled, exit 137)")
    assert verdict_from_job(_finished("Complete"), [_pod({"exitCode": 0, "message": "done"})]) == \
        (False, "validation job completed without a result")


def test_verdict_newest_pod_speaks() -> None:
    """A pod replaced after a disruption: the replacement's verdict counts."""
    old = _pod({"exitCode": 137, "reason": "Error", "message": v.error_json("evicted")}, created="2025-01-01T00:00:00Z")
    new = _pod({"exitCode": 0, "message": v.judge(10, 10, None, 0.9, None).to_json()}, created="2025-01-01T00:01:00Z")
    assert verdict_from_job(_finished("Complete"), [new, old]) == (True, "accuracy 1.000 >= 0.9 (10/10 correct)")


def test_parse_result_ignores_other_json() -> None:
    assert parse_result('{"level": "info"}\nnot json') is None
    assert parse_result('{"passed": true, "message": "ok"}')["passed"] is True  # type: ignore[index]


# ---------------------------------------------------------------- the Validator against an in-memory API


class _Kube:
    """Just the four calls the Validator makes, over a dict; Conflict on a second create, like the API."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def get_or_none(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind} {name}")
        return self.jobs.get(name)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        from modeldeploy.kube.client import Conflict

        self.calls.append(f"create {obj['kind']} {obj['metadata']['name']}")
        if obj["metadata"]["name"] in self.jobs:
            raise Conflict("AlreadyExists")
        stored = json.loads(json.dumps(obj))
        stored["metadata"]["uid"] = "job-uid"
        stored["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": "job-uid"}}
        self.jobs[obj["metadata"]["name"]] = stored
        return stored

    def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.calls.append(f"list {kind} {sorted((labels or {}).items())}")
        return self.pods

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.calls.append(f"delete {kind} {name} {uid}")
        self.jobs.pop(name, None)


def _validator() -> tuple[Any, _Kube]:
    from modeldeploy.config import Settings
    from modeldeploy.validation import Validator

    kube = _Kube()
    return Validator(kube, Settings(loader_image="registry.local/loader:1")), kube  # type: ignore[arg-type]


MD = {"metadata": {"name": "digits", "namespace": "ml", "uid": UID}}


def test_validator_creates_once_and_reads_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    from modeldeploy import validation

    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(validation.events, "post", lambda kube, md, kind, reason, msg: posted.append((reason, msg)))
    validator, kube = _validator()
    spec = _spec()
    assert validator.result(MD, spec, "abc1234567") is None  # not started yet
    validator.ensure_started(MD, spec, "abc1234567", "def7654321")
    validator.ensure_started(MD, spec, "abc1234567", "def7654321")
    assert [c for c in kube.calls if c.startswith("create")] == ["create Job digits-validate-abc1234567"]
    assert _container(kube.jobs["digits-validate-abc1234567"])["image"] == "registry.local/loader:1"
    assert posted == [("ValidationStarted", "revision abc1234567: validation Job digits-validate-abc1234567 started")]
    assert validator.result(MD, spec, "abc1234567") is None  # running: no pods listed
    assert not any(c.startswith("list") for c in kube.calls)
    job = kube.jobs["digits-validate-abc1234567"]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.pods = [_pod({"exitCode": 0, "message": v.judge(10, 10, None, 0.9, None).to_json()})]
    assert validator.result(MD, spec, "abc1234567") == (True, "accuracy 1.000 >= 0.9 (10/10 correct)")
    assert kube.calls[-1] == "list Pod [('batch.kubernetes.io/controller-uid', 'job-uid')]"


def test_validator_replaces_a_job_built_for_other_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    from modeldeploy import validation

    monkeypatch.setattr(validation.events, "post", lambda *a: None)
    validator, kube = _validator()
    validator.ensure_started(MD, _spec(), "abc1234567", "def7654321")
    kube.jobs["digits-validate-abc1234567"]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    stricter = _spec({**VALIDATION, "minAccuracy": 0.5})
    assert validator.result(MD, stricter, "abc1234567") is None
    assert "delete Job digits-validate-abc1234567 job-uid" in kube.calls
    validator.ensure_started(MD, stricter, "abc1234567", "def7654321")
    assert kube.jobs["digits-validate-abc1234567"]["metadata"]["annotations"][vj.ANNOTATION_FINGERPRINT] == \
        vj.fingerprint(stricter)


def test_validator_ignores_a_job_of_another_owner() -> None:
    """Left over from a deleted ModelDeployment of the same name: the garbage collector's, not ours."""
    validator, kube = _validator()
    job = _job()
    job["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.jobs[job["metadata"]["name"]] = job
    assert validator.result(MD, _spec(), "abc1234567") is None
    assert not any(c.startswith("delete") for c in kube.calls)


def test_service_urls_fall_back_to_service_links_without_cluster_dns() -> None:
    from modeldeploy.loader.validate import service_link_url

    env = {"DIGITS_CANARY_SERVICE_HOST": "10.96.0.12", "DIGITS_CANARY_SERVICE_PORT_HTTP": "8000"}
    url = "http://digits-canary.ml.svc:8000"
    assert service_link_url(url, env, resolves=lambda h: False) == "http://10.96.0.12:8000"
    assert service_link_url(url, env, resolves=lambda h: True) == url  # cluster DNS answers: use it
    assert service_link_url(url, {}, resolves=lambda h: False) == url  # nothing better known
    assert service_link_url("http://10.0.0.1:8000", env, resolves=lambda h: False) == "http://10.0.0.1:8000"
