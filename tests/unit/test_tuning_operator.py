"""Deploy-time tuning on the operator's side (issue 18): the spec, the revision hash, the build Job,
the artifact key and its hardware class, reuse without a new sweep, and the Tuned condition. Whole
passes run against the in-memory API of test_built_revisions; the sweep itself is
tests/integration/test_tuning.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy.artifact.key import artifact_key, key_inputs
from modeldeploy.artifact.manifest import Manifest
from modeldeploy.config import Settings
from modeldeploy.loader.errors import ConfigError
from modeldeploy.loader.settings import LoaderSettings, from_sources
from modeldeploy.planning import build as b
from modeldeploy.planning import reuse, tuning
from modeldeploy.reconciler import Reconciler
from modeldeploy.resources import build_job as bj
from modeldeploy.resources.deployment import loader_env
from modeldeploy.tuning.settings import TuneSettings
from tests.integration.invalid_specs import apply_patch
from tests.unit.test_artifact_reuse import (
    IMAGES,
    SPEC,
    STORE,
    AllNamespaces,
    _add,
    _cli_key,
    _cond,
    _jobs,
    _status,
)
from tests.unit.test_built_revisions import SHA

TUNE = {"objective": "throughput", "maxP99": "50ms", "budget": "2m"}
TUNED = apply_patch(SPEC, {"model": {"optimization": {"tune": TUNE}}, "serving": {
    "gpus": 0, "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}}})
SUMMARY = {"objective": "throughput", "maxP99Ms": 50.0, "boundMet": True, "isDefault": False,
           "settings": {"maxBatchSize": 32, "instances": 1,
                        "dynamicBatching": {"maxQueueDelayMicroseconds": 0, "preferredBatchSizes": []}},
           "default": {"concurrency": 32, "throughput": 2689.5, "p50Ms": 11.9, "p99Ms": 49.6},
           "tuned": {"concurrency": 32, "throughput": 5564.0, "p50Ms": 4.7, "p99Ms": 30.2},
           "candidates": 8, "seconds": 58.0, "budgetSeconds": 120.0}


def _spec(raw: Mapping[str, Any]) -> api.ModelDeploymentSpec:
    return api.parse_spec(copy.deepcopy(dict(raw)), name="digits")


def _env(spec: Mapping[str, Any], namespace: str = "ml") -> dict[str, str]:
    return {e["name"]: e["value"] for e in bj.build_env(namespace, _spec(spec), IMAGES, STORE) if "value" in e}


# ---------------------------------------------------------------- spec and revision


def test_tune_is_parsed_with_defaults() -> None:
    t = _spec(apply_patch(SPEC, {"model": {"optimization": {"tune": {}}}})).model.optimization.tune
    assert t == api.TuneSpec(objective="throughput", max_p99=None, budget=180.0, when_bound_not_met="ServeBest",
                             concurrency=(1, 8, 32))
    assert _spec(TUNED).model.optimization.tune == api.TuneSpec(max_p99=0.05, budget=120.0)


def test_the_revision_changes_only_when_tune_is_set() -> None:
    plain = api.revision_hash(_spec(SPEC), images=["x"])
    assert api.revision_hash(_spec(apply_patch(SPEC, {"model": {"optimization": {"tune": None}}})),
                             images=["x"]) == plain
    tuned = api.revision_hash(_spec(apply_patch(SPEC, {"model": {"optimization": {"tune": TUNE}}})), images=["x"])
    tighter = {"model": {"optimization": {"tune": {**TUNE, "maxP99": "20ms"}}}}
    other = api.revision_hash(_spec(apply_patch(SPEC, tighter)), images=["x"])
    assert len({plain, tuned, other}) == 3


# ---------------------------------------------------------------- the build Job


def test_a_tuned_build_runs_the_serving_triton_and_gets_the_settings() -> None:
    job = bj.build_build_job("digits", "ml", "uid", _spec(TUNED), "abc1234567", IMAGES, STORE)
    pod = job["spec"]["template"]["spec"]
    (gate,) = pod["initContainers"]
    assert gate["name"] == bj.GATE_CONTAINER and gate["image"] == IMAGES.serving and gate["restartPolicy"] == "Always"
    # the serving limits for both containers, the pod's requests one serving pod's (halved, as for int8)
    half = {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}
    assert gate["resources"] == half and pod["containers"][0]["resources"] == half
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MD_GATE_TRITON_URL"] == bj.GATE_URL and env["MD_GATE_REPOSITORY"] == "/models"
    assert json.loads(env["MD_TUNE"]) == {"objective": "throughput", "maxP99Ms": 50.0, "budgetSeconds": 120.0,
                                          "onBoundMiss": "ServeBest", "concurrency": [1, 8, 32], "cpus": 2}
    assert env["MD_ARTIFACT_HARDWARE"] == "gpu=none;cpu=2;memory=2Gi"


def test_an_untuned_build_is_unchanged() -> None:
    env = _env(SPEC)
    assert not {"MD_TUNE", "MD_ARTIFACT_HARDWARE", "MD_GATE_TRITON_URL"} & set(env)
    pod = bj.build_build_job("digits", "ml", "uid", _spec(SPEC), "abc1234567", IMAGES, STORE)["spec"]["template"]
    assert "initContainers" not in pod["spec"]


def test_serving_pods_never_tune() -> None:
    assert "MD_TUNE" not in {e["name"] for e in loader_env(_spec(TUNED), IMAGES)}


@pytest.mark.parametrize(("patch", "want"), [
    ({}, "gpu=none;cpu=2;memory=2Gi"),
    ({"serving": {"resources": {"limits": {"cpu": "4"}}}}, "gpu=none;cpu=4;memory=2Gi"),
    ({"serving": {"gpus": 2, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}},
     "gpu=nvidia.com/gpux2;cpu=2;memory=2Gi;node:nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB"),
    ({"serving": {"gpus": 1, "gpuResourceName": "nvidia.com/mig-1g.10gb"}},
     "gpu=nvidia.com/mig-1g.10gbx1;cpu=2;memory=2Gi"),
    ({"serving": {"resources": None, "nodeSelector": {"pool": "b", "arch": "amd64"}}},
     "gpu=none;cpu=-;memory=-;node:arch=amd64;node:pool=b"),
])
def test_hardware_class(patch: dict[str, Any], want: str) -> None:
    assert bj.hardware_class(_spec(apply_patch(TUNED, patch))) == want


@pytest.mark.parametrize(("quantity", "cpus"), [("2", 2), ("500m", 1), ("2500m", 3), ("1.5", 2), ("", 0), ("x", 0)])
def test_cpu_count(quantity: str, cpus: int) -> None:
    assert bj.cpu_count(quantity) == cpus


# ---------------------------------------------------------------- the key


def test_tuning_and_the_hardware_class_are_in_the_key_only_when_tuning() -> None:
    s = LoaderSettings(source_uri="s3://m/d.onnx", model_name="digits", sha256=SHA, max_batch_size=8)
    assert not {"tune", "tuneHardware"} & set(key_inputs(s, hardware="gpu=none;cpu=2"))
    assert artifact_key(s, hardware="a") == artifact_key(s, hardware="b")  # untuned keys are what they were
    t = LoaderSettings(source_uri="s3://m/d.onnx", model_name="digits", sha256=SHA, max_batch_size=8,
                       tune=TuneSettings())
    keys = {artifact_key(s), artifact_key(t, hardware="cpu=2"), artifact_key(t, hardware="cpu=4"),
            artifact_key(LoaderSettings(**{**t.__dict__, "tune": TuneSettings(max_p99_s=0.05)}), hardware="cpu=2")}
    assert len(keys) == 4


def test_the_operator_computes_the_tuned_key_the_job_computes(capsys: pytest.CaptureFixture[str]) -> None:
    env = bj.build_env("ml", _spec(TUNED), IMAGES, STORE)
    key = reuse.job_key(env)
    assert key is not None and key == _cli_key(env, capsys)
    assert key != reuse.job_key(bj.build_env("ml", _spec(apply_patch(TUNED, {"serving": {"nodeSelector": {
        "pool": "other"}}})), IMAGES, STORE))


@pytest.mark.parametrize(("env", "error"), [
    ({"MD_TUNE": "{}"}, "MD_TUNE needs the build's Triton"),
    ({"MD_TUNE": '{"objective": "x"}', "MD_GATE_TRITON_URL": "http://127.0.0.1:8000", "MD_GATE_REPOSITORY": "/m"},
     "MD_TUNE: objective must be one of"),
    ({"MD_TUNE": "{}", "MD_MAX_BATCH_SIZE": "0", "MD_GATE_TRITON_URL": "http://127.0.0.1:8000",
      "MD_GATE_REPOSITORY": "/m"}, "MD_TUNE needs MD_MAX_BATCH_SIZE >= 1"),
    ({"MD_TUNE": "{}", "MD_FORMAT": "python", "MD_GATE_TRITON_URL": "http://127.0.0.1:8000",
      "MD_GATE_REPOSITORY": "/m"}, "not to format python"),
])
def test_the_builder_refuses_tuning_it_cannot_do(env: dict[str, str], error: str) -> None:
    base = {"MD_SOURCE_URI": "s3://m/d.onnx", "MD_MODEL_NAME": "digits", "MD_MAX_BATCH_SIZE": "8"}
    with pytest.raises(ConfigError, match=error):
        from_sources([], {**base, **env})


# ---------------------------------------------------------------- the record and the condition


def test_the_record_keeps_the_summary_without_nulls() -> None:
    result = {"result": "built", "key": "k", "modelSha256": SHA, "tuning": {**SUMMARY, "maxP99Ms": None}}
    rec = b.artifact_record(result)
    assert rec["tuning"] == {k: v for k, v in SUMMARY.items() if k != "maxP99Ms"}
    state = b.recorded({"revisions": [{"revision": "r1", "artifact": {**rec, "buildSeconds": 70.0}}]}, "r1")
    assert state is not None and "tuned: 5564.0/s p99 30.2ms vs the default's 2689.5/s p99 49.6ms" in state.message
    assert "maxP99" not in state.message
    missed = b.recorded({"revisions": [{"revision": "r1", "artifact": {
        **rec, "tuning": {**SUMMARY, "boundMet": False}}}]}, "r1")
    assert missed is not None and missed.message.endswith("(no configuration met maxP99 50.0ms)")


def test_the_manifest_keeps_tuning_and_untuned_manifests_keep_their_bytes() -> None:
    files = {"config.pbtxt": {"sha256": "a" * 64, "size": 1}}
    doc = {"formatVersion": 1, "key": "digits-" + "0" * 32, "modelName": "digits", "files": files}
    plain = Manifest.from_json(json.dumps(doc).encode())
    assert plain.tuning is None and b'"tuning"' not in plain.to_json()
    tuned = Manifest.from_json(json.dumps({**doc, "tuning": {**SUMMARY, "measured": []}}).encode())
    assert tuned.tuning is not None and Manifest.from_json(tuned.to_json()).tuning == {**SUMMARY, "measured": []}


ART = {"key": "k", "modelSha256": SHA, "tuning": SUMMARY}


@pytest.mark.parametrize(("requested", "build", "want"), [
    (False, None, None),
    (True, None, (False, "TuningNeedsArtifactStore", "needs the chart's artifacts.store")),
    (True, b.BuildState(b.Reason.BUILDING, "running"), (None, "Tuning", "the build Job tunes")),
    (True, b.BuildState(b.Reason.BUILD_FAILED, "x", failure="tuning: no configuration met maxP99 1ms"),
     (False, "BuildFailed", "no configuration met maxP99 1ms")),
    (True, b.BuildState(b.Reason.BUILT, "x", artifact=ART),
     (True, "Tuned", "serving maxBatchSize 32, instances 1, dynamic batching (delay 0us, preferred none) at "
                     "concurrency 32: 5564/s p99 30.2ms vs the default's 2689.5/s p99 49.6ms (2.07x throughput); "
                     "8 candidates in 58.0s of a 120.0s budget")),
    (True, b.BuildState(b.Reason.BUILT, "x", artifact={**ART, "tuning": {**SUMMARY, "isDefault": True}}),
     (True, "DefaultKept", "no configuration beat the default generated one")),
    (True, b.BuildState(b.Reason.BUILT, "x", artifact={**ART, "tuning": {
        **SUMMARY, "boundMet": False, "message": "no configuration met maxP99 1ms: the best (…) has lowest p99 "
                                                 "0.9ms at concurrency 1"}}),
     (False, "LatencyBoundNotMet", "no configuration met maxP99 1ms: the best (…) has lowest p99 0.9ms")),
    (True, b.BuildState(b.Reason.BUILT, "x", artifact={"key": "k"}), (False, "NoTuningRecord", "records no tuning")),
])
def test_tuned_condition(requested: bool, build: b.BuildState | None, want: tuple[Any, str, str] | None) -> None:
    got = tuning.condition(requested, build, "r1")
    if want is None:
        assert got is None
        return
    assert got is not None and got[:2] == want[:2] and want[2] in got[2], got


# ---------------------------------------------------------------- whole passes: reuse, no new sweep


def _world(spec: Mapping[str, Any]) -> tuple[AllNamespaces, Reconciler]:
    kube = AllNamespaces()
    _add(kube, "ml", "digits", spec)
    rec = Reconciler(kube, Settings(artifact_store="s3://artifacts", artifact_store_secret="s3-creds"))  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    return kube, rec


def _complete(kube: AllNamespaces, job: dict[str, Any], result: dict[str, Any]) -> None:
    """The build pod ends with the builder's JSON result, the Job completes (as the Job controller does)."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    kube.objects[("Pod", ns, f"{name}-x")] = {
        "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": ns, "labels": {"job-name": name},
                                    "creationTimestamp": "2026-12-02T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": {
            "exitCode": 0, "message": json.dumps(result), "reason": "Completed"}}}]}}
    job["spec"]["selector"] = {"matchLabels": {"job-name": name}}
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}


def _built(kube: AllNamespaces, rec: Reconciler) -> str:
    rec.reconcile("ml", "digits")
    (job,) = _jobs(kube, "ml")
    key = reuse.job_key(job["spec"]["template"]["spec"]["containers"][0]["env"])
    assert key is not None
    _complete(kube, job, {"result": "built", "key": key, "modelName": "digits", "modelSha256": SHA, "quantized": False,
                          "buildSeconds": 70.0, "builtAt": "2026-12-02T11:59:00Z", "tuning": SUMMARY})
    rec.reconcile("ml", "digits")
    return key


def test_a_tuned_build_records_default_vs_chosen_and_the_condition() -> None:
    kube, rec = _world(TUNED)
    rec.reconcile("ml", "digits")
    st = _status(kube, "ml", "digits")
    assert _cond(st, "Tuned")["status"] == "Unknown" and _cond(st, "Tuned")["reason"] == "Tuning"
    kube2, rec2 = _world(TUNED)
    key = _built(kube2, rec2)
    st = _status(kube2, "ml", "digits")
    (entry,) = st["revisions"]
    assert entry["artifact"]["key"] == key and entry["artifact"]["tuning"] == SUMMARY
    tuned = _cond(st, "Tuned")
    assert (tuned["status"], tuned["reason"]) == ("True", "Tuned") and "2.07x throughput" in tuned["message"]
    built = [e for e in kube2.of("Event") if e["reason"] == "Built"]
    assert built and "tuned: 5564.0/s p99 30.2ms vs the default's 2689.5/s p99 49.6ms" in built[0]["message"]


def test_a_second_model_on_the_same_hardware_reuses_the_tuned_artifact_without_a_sweep() -> None:
    kube, rec = _world(TUNED)
    key = _built(kube, rec)
    _add(kube, "team-b", "digits", TUNED)
    rec.reconcile("team-b", "digits")
    rec.reconcile("team-b", "digits")
    assert _jobs(kube, "team-b") == []  # no build Job: no sweep
    st = _status(kube, "team-b", "digits")
    (entry,) = st["revisions"]
    assert entry["artifact"]["key"] == key and entry["artifact"]["reused"] is True
    assert entry["artifact"]["tuning"] == SUMMARY and _cond(st, "Tuned")["reason"] == "Tuned"


@pytest.mark.parametrize("patch", [
    {"serving": {"resources": {"limits": {"cpu": "4"}}}},
    {"serving": {"nodeSelector": {"node.kubernetes.io/instance-type": "c7i.2xlarge"}}},
    {"model": {"optimization": {"tune": {"maxP99": "10ms"}}}},
], ids=["other-cpu-limit", "other-node-class", "other-bound"])
def test_other_hardware_or_other_tune_settings_tune_again(patch: dict[str, Any]) -> None:
    kube, rec = _world(TUNED)
    _built(kube, rec)
    _add(kube, "team-b", "digits", apply_patch(TUNED, patch))
    rec.reconcile("team-b", "digits")
    assert len(_jobs(kube, "team-b")) == 1


def test_without_an_artifact_store_the_condition_says_tuning_needs_one() -> None:
    kube = AllNamespaces()
    _add(kube, "ml", "digits", TUNED)
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    rec.reconcile("ml", "digits")
    cond = _cond(_status(kube, "ml", "digits"), "Tuned")
    assert (cond["status"], cond["reason"]) == ("False", "TuningNeedsArtifactStore")
    assert _jobs(kube, "ml") == []

