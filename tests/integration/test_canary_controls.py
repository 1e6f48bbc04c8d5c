"""Canary controls on a real control plane: pause, resume, abort by annotation, through operator kills.

kwok pods have no Triton metrics, so nothing here is judged automatically (the analysis interval is
longer than the tests): every move is the user's, and status.canary alone carries the rollout
across operator restarts. Automatic verdicts on real metrics are in tests/e2e/test_canary.py.
"""

from __future__ import annotations

from typing import Any

from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

MD = "modeldeployment"
ROLLOUT = {"strategy": "Canary", "maxSurgeGpus": 0,
           "steps": [{"weight": 25, "pause": "1s"}, {"weight": 50, "pause": "1s"}, {"weight": 75, "pause": "1s"}],
           "analysis": {"interval": "1h"}}


def _md(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", ns)


def _canary(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return _md(tc, ns, name).get("status", {}).get("canary") or {}


def _replicas(tc: ClusterHandle, ns: str, name: str) -> dict[str, int]:
    items = tc.kubectl_json("get", "deployments", "-n", ns, "-l", f"modeldeploy.io/name={name}")["items"]
    return {d["metadata"]["labels"]["modeldeploy.io/revision"]: d["spec"]["replicas"] for d in items
            if not d["metadata"].get("deletionTimestamp")}


def _events(tc: ClusterHandle, ns: str, name: str, reason: str) -> list[str]:
    return [e["message"] for e in tc.kubectl_json("get", "events", "-n", ns)["items"]
            if e["involvedObject"].get("name") == name and e["reason"] == reason]


def _start_canary(tc: ClusterHandle, ns: str, name: str) -> tuple[str, dict[str, Any]]:
    tc.apply(model_deployment(name, replicas=4, rollout=ROLLOUT), ns)
    wait_for(lambda: _md(tc, ns, name).get("status", {}).get("phase") == "Ready", 60, message="v1 ready")
    stable = _md(tc, ns, name)["status"]["stableRevision"]
    tc.apply(model_deployment(name, version="2", replicas=4, rollout=ROLLOUT), ns)
    can = wait_for(lambda: (c := _canary(tc, ns, name)).get("stepStartedAt") and c, 60,
                   message="canary at step 1 with its pods ready")
    return stable, can


def test_pause_resume_and_restarts_keep_the_rollout_where_it_was(cluster: ClusterHandle, operator: Any,
                                                                 namespace: str) -> None:
    stable, can = _start_canary(cluster, namespace, "ctl")
    assert can["phase"] == "Progressing" and can["step"] == 0 and can["weight"] == 25
    assert _replicas(cluster, namespace, "ctl") == {stable: 3, can["revision"]: 1}  # maxSurgeGpus 0: 4 GPUs
    main = cluster.kubectl_json("get", "service", "ctl", "-n", namespace)["spec"]["selector"]
    assert main == {"modeldeploy.io/name": "ctl"}  # live traffic reaches the canary pod

    operator.kill()
    operator.start()
    operator.wait_for_reconciles(namespace, ["ctl"])  # the restarted operator's first pass is done
    after = _canary(cluster, namespace, "ctl")
    assert {k: after[k] for k in ("revision", "startedAt", "stepStartedAt", "step")} == \
           {k: can[k] for k in ("revision", "startedAt", "stepStartedAt", "step")}
    assert len(_events(cluster, namespace, "ctl", "CanaryStarted")) == 1

    cluster.kubectl("annotate", MD, "ctl", "-n", namespace, "modeldeploy.io/pause=true")
    wait_for(lambda: _canary(cluster, namespace, "ctl").get("phase") == "Paused", 20, message="paused")
    operator.kill()
    operator.start()
    operator.wait_for_reconciles(namespace, ["ctl"])
    paused = _canary(cluster, namespace, "ctl")
    assert paused["phase"] == "Paused" and paused["paused"] is True and paused["pausedFrom"] == "Progressing"
    cond = {c["type"]: c for c in _md(cluster, namespace, "ctl")["status"]["conditions"]}["Progressing"]
    assert cond["reason"] == "CanaryInProgress" and "paused at step 1" in cond["message"]

    cluster.kubectl("annotate", MD, "ctl", "-n", namespace, "modeldeploy.io/pause-")
    wait_for(lambda: _canary(cluster, namespace, "ctl").get("phase") == "Progressing", 20, message="resumed")
    assert _events(cluster, namespace, "ctl", "CanaryResumed")
    assert _md(cluster, namespace, "ctl")["metadata"]["generation"] == 2


def test_abort_rolls_back_and_the_annotation_is_consumed(cluster: ClusterHandle, operator: Any,
                                                         namespace: str) -> None:
    stable, can = _start_canary(cluster, namespace, "abort")
    cluster.kubectl("annotate", MD, "abort", "-n", namespace, "modeldeploy.io/abort=true")
    wait_for(lambda: _canary(cluster, namespace, "abort").get("phase") == "RolledBack", 30, message="rolled back")
    st = _md(cluster, namespace, "abort")["status"]
    assert st["stableRevision"] == stable and st["failedRevision"] == can["revision"]
    assert st["canary"]["rollbackReason"] == "Aborted"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Degraded"]["reason"] == "Aborted" and conds["Progressing"]["reason"] == "RolloutFailed"
    wait_for(lambda: _replicas(cluster, namespace, "abort") == {stable: 4, can["revision"]: 0}, 30,
             message="stable back on every replica")
    wait_for(lambda: "modeldeploy.io/abort" not in (_md(cluster, namespace, "abort")["metadata"]
                                                    .get("annotations") or {}), 10, message="annotation consumed")
    assert _events(cluster, namespace, "abort", "Aborted")
    # A rolled-back revision stays stopped; the next spec change gets a fresh canary.
    cluster.apply(model_deployment("abort", version="3", replicas=4, rollout=ROLLOUT), namespace)
    fresh = wait_for(lambda: (c := _canary(cluster, namespace, "abort")).get("phase") == "Progressing" and c, 30,
                     message="a new canary for version 3")
    assert fresh["revision"] not in (stable, can["revision"]) and fresh["step"] == 0
    wait_for(lambda: can["revision"] not in _replicas(cluster, namespace, "abort"), 30,
             message="the rolled-back revision's Deployment retired")


def test_validating_canary_gets_no_live_traffic(cluster: ClusterHandle, operator: Any, namespace: str) -> None:
    rollout = {**ROLLOUT, "validation": {"datasetUri": "s3://models/val/validation.npz", "minAccuracy": 0.9}}
    cluster.apply(model_deployment("gate", replicas=2, rollout=rollout), namespace)
    wait_for(lambda: _md(cluster, namespace, "gate").get("status", {}).get("phase") == "Ready", 60, message="ready")
    stable = _md(cluster, namespace, "gate")["status"]["stableRevision"]
    cluster.apply(model_deployment("gate", version="2", replicas=2, rollout=rollout), namespace)
    wait_for(lambda: _canary(cluster, namespace, "gate").get("phase") == "Validating", 30, message="validating")
    selector = cluster.kubectl_json("get", "service", "gate", "-n", namespace)["spec"]["selector"]
    assert selector == {"modeldeploy.io/name": "gate", "modeldeploy.io/revision": stable}
    can = _canary(cluster, namespace, "gate")
    canary_svc = cluster.kubectl_json("get", "service", "gate-canary", "-n", namespace)["spec"]["selector"]
    assert canary_svc["modeldeploy.io/revision"] == can["revision"]  # what the validation Job talks to
