"""Canary rollouts on real Triton pods, judged on their own metrics, with a client sending all along.

A good version is promoted through every step with zero failed client requests, even though the
operator is killed at every step; a version that fails a share of requests and one that is much
slower are rolled back on their own, and the failures clients saw stay within the first step.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import service_answers
from tests.support import operator as op
from tests.support.bad_models import bad_digits_tarball
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.load import Load

pytestmark = pytest.mark.e2e

NS = "canary-e2e"
NAME = "digits"
STEPS = [{"weight": 25, "pause": "6s"}, {"weight": 50, "pause": "6s"}, {"weight": 75, "pause": "6s"}]
REPLICAS = 4

def _spec(version: str, uri: str, fmt: str = "onnx") -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME},
            "spec": {"model": {"name": "digits", "version": version,
                               "source": {"uri": uri, "credentialsSecret": "s3-creds"}, "format": fmt,
                               "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": REPLICAS,
                     "rollout": {"strategy": "Canary", "maxSurgeGpus": 0, "steps": STEPS,
                                 "analysis": {"interval": "3s", "minRequests": 20, "maxErrorRate": 0.02,
                                              "maxLatencyRatio": 3.0, "failureLimit": 2}}}}


def _md(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", NAME, "-n", NS)


def _events(tc: ClusterHandle, reason: str) -> list[str]:
    items = tc.kubectl_json("get", "events", "-n", NS)["items"]
    return [e["message"] for e in items if e["involvedObject"].get("name") == NAME and e["reason"] == reason]


def _deployments(tc: ClusterHandle) -> list[str]:
    items = tc.kubectl_json("get", "deployments", "-n", NS, "-l", f"modeldeploy.io/name={NAME}")["items"]
    return sorted(d["metadata"]["name"] for d in items if not d["metadata"].get("deletionTimestamp"))


def _rolled_back_version(tc: ClusterHandle) -> str | None:
    """The spec's model version once the operator has rolled its canary back (an earlier rollback's
    status.canary must not count for a newer spec)."""
    md = _md(tc)
    st = md.get("status", {})
    can = st.get("canary") or {}
    if st.get("observedGeneration") != md["metadata"]["generation"] or can.get("phase") != "RolledBack":
        return None
    return md["spec"]["model"]["version"] if st.get("failedRevision") == can.get("revision") else None


def _main_service_pods(tc: ClusterHandle) -> set[str]:
    """Pods the Service `<name>` sends live traffic to (ready endpoints)."""
    slices = tc.kubectl_json("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={NAME}")
    return {ep.get("targetRef", {}).get("name", "") for s in slices["items"] for ep in s.get("endpoints") or []
            if ep.get("conditions", {}).get("ready")}


def _upload_bad(stack: dict[str, Any], key: str, fail_every: int, delay: float) -> str:
    uri = f"s3://models/digits/{key}/model.tar.gz"
    stack["store"].put(uri, bad_digits_tarball(fail_every, delay))
    return uri


@pytest.fixture(scope="module")
def serving(real_cluster: ClusterHandle, stack: dict[str, Any]) -> str:
    """Version 1 serving on three pods; the Service's address."""
    real_cluster.apply(_spec("1", "s3://models/digits/1/model.onnx"), NS)
    wait_for(lambda: _md(real_cluster).get("status", {}).get("phase") == "Ready"
             and _md(real_cluster)["status"].get("readyReplicas") == REPLICAS, 300, interval=1, message="v1 serving")
    ip = real_cluster.kubectl_json("get", "service", NAME, "-n", NS)["spec"]["clusterIP"]
    url = f"{ip}:8000"
    wait_for(lambda: service_answers(url), 30, interval=0.5, message="the Service answers")
    return url


def test_good_version_is_promoted_through_every_step_despite_operator_kills(
        real_cluster: ClusterHandle, serving: str) -> None:
    before = _md(real_cluster)["status"]["stableRevision"]
    seen_steps: list[int] = []
    failovers: list[float] = []
    max_deployments = 0
    with Load(serving, senders=3, pause=0.02) as load:
        time.sleep(2)
        real_cluster.apply(_spec("2", "s3://models/digits/2/model.onnx"), NS)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            st = _md(real_cluster).get("status", {})
            can = st.get("canary") or {}
            max_deployments = max(max_deployments, len(_deployments(real_cluster)))
            if can.get("phase") == "Progressing" and can.get("stepStartedAt") and can.get("step") not in seen_steps:
                seen_steps.append(can["step"])
                # At every step the leader dies: the standby must continue, not restart the canary.
                failovers.append(op.kill_leader(real_cluster)[2])
            if st.get("stableRevision") != before and st.get("phase") == "Ready":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not promoted in time: {_md(real_cluster).get('status')}")
    st = _md(real_cluster)["status"]
    assert st["canary"]["phase"] == "Promoted" and st["canary"]["revision"] == st["stableRevision"]
    assert seen_steps == [0, 1, 2]
    assert len(failovers) == 3 and max(failovers) <= 15, failovers
    assert max_deployments <= 2, "never more than the stable and the canary Deployment"
    reached = _events(real_cluster, "CanaryStepReached")
    # Each step reached exactly once (none lost or repeated), with 1, 2 and 3 of 4 pods on the canary.
    assert sorted(m.split(":")[0] for m in reached) == ["step 1/3", "step 2/3", "step 3/3"], reached
    assert [m.split(": ")[1].split(" canary")[0] for m in sorted(reached)] == ["1", "2", "3"], reached
    assert len(_events(real_cluster, "CanaryPromoted")) == 1
    assert load.ok > 200 and load.failed == [], load.failed[:3]
    wait_for(lambda: len(_deployments(real_cluster)) == 1, 60, interval=1, message="the old revision retired")


@pytest.mark.parametrize(("key", "fail_every", "delay", "why"), [
    ("erroring", 4, 0.0, "error rate"),
    ("slow", 0, 0.08, "latency"),
], ids=["erroring", "slow"])
def test_bad_version_is_rolled_back_automatically(real_cluster: ClusterHandle, stack: dict[str, Any], serving: str,
                                                  key: str, fail_every: int, delay: float, why: str) -> None:
    stable = _md(real_cluster)["status"]["stableRevision"]
    uri = _upload_bad(stack, key, fail_every, delay)
    with Load(serving, senders=3, pause=0.02) as load:
        time.sleep(2)
        ok_before, failed_before = load.ok, len(load.failed)
        real_cluster.apply(_spec(f"bad-{key}", uri, fmt="python"), NS)
        wait_for(lambda: _rolled_back_version(real_cluster) == f"bad-{key}", 240, interval=1,
                 message=f"{key} canary rolled back")
        wait_for(lambda: _md(real_cluster)["status"].get("readyReplicas") == REPLICAS, 120, interval=1,
                 message="the stable revision back on every pod")
        time.sleep(3)
        during = (load.ok - ok_before) + (len(load.failed) - failed_before)
        failed = len(load.failed) - failed_before
    st = _md(real_cluster)["status"]
    assert st["stableRevision"] == stable and st["failedRevision"] == st["canary"]["revision"]
    assert st["canary"]["rollbackReason"] == "CanaryAnalysisFailed" and why in st["canary"]["message"]
    assert max(a.get("step", 0) for a in st["canary"]["analyses"]) == 0, "rolled back within the first step"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "CanaryAnalysisFailed"
    assert st["phase"] == "Degraded"
    # What clients saw: at most the first step's share of traffic went to the bad version.
    assert during > 100
    assert failed / during <= STEPS[0]["weight"] / 100, (failed, during, load.failed[:3])
    assert _events(real_cluster, "CanaryRolledBack"), "a Warning event says why"


def test_version_failing_validation_never_gets_live_traffic(real_cluster: ClusterHandle, stack: dict[str, Any],
                                                            serving: str) -> None:
    stable = _md(real_cluster)["status"]["stableRevision"]
    uri = _upload_bad(stack, "zeros", 0, 0.0)  # answers every request, always with class 0
    spec = _spec("bad-zeros", uri, fmt="python")
    spec["spec"]["rollout"]["validation"] = {"datasetUri": "s3://models/digits/validation.npz", "minAccuracy": 0.9}
    in_main_service: set[str] = set()
    with Load(serving, senders=2, pause=0.02) as load:
        real_cluster.apply(spec, NS)
        deadline = time.monotonic() + 300
        while _rolled_back_version(real_cluster) != "bad-zeros":
            assert time.monotonic() < deadline, _md(real_cluster)["status"]
            in_main_service |= _main_service_pods(real_cluster)
            time.sleep(0.5)
        time.sleep(2)
    st = _md(real_cluster)["status"]
    canary_pods = {p for p in in_main_service if p.startswith(f"{NAME}-{st['canary']['revision']}-")}
    assert not canary_pods, f"the canary was in the main Service before its validation: {canary_pods}"
    assert st["stableRevision"] == stable and st["canary"]["rollbackReason"] == "ValidationFailed"
    assert st["canary"]["validation"]["verdict"] == "Failed"
    assert "accuracy" in st["canary"]["validation"]["message"], st["canary"]["validation"]
    assert not st["canary"].get("analyses"), "judged before any live traffic"
    assert load.ok > 50 and load.failed == [], load.failed[:3]  # no client ever reached the canary
    jobs = real_cluster.kubectl_json("get", "jobs", "-n", NS)["items"]
    job = next(j for j in jobs if j["metadata"]["name"] == f"{NAME}-validate-{st['canary']['revision']}")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
