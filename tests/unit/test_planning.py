"""Drift detection, pod failure reading and status computation (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from modeldeploy.planning import drift, observe, status
from modeldeploy.planning.observe import RevisionState
from modeldeploy.planning.switch import SwitchPlan

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("want", "live", "expected"), [
    ({"a": 1}, {"a": 1, "b": 2}, True),  # extra live fields (defaults) are fine
    ({"a": 1}, {"a": 2}, False),
    ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}, True),
    ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),  # lists match by length
    ({"a": [{"n": "x"}]}, {"a": [{"n": "x", "protocol": "TCP"}]}, True),
    ({"cpu": "1000m"}, {"cpu": "1"}, True),  # the API server normalises quantities
    ({"memory": "1Gi"}, {"memory": "1073741824"}, True),
    ({"replicas": 2}, {"replicas": "2"}, True),
    ({"flag": True}, {"flag": 1}, False),
    ({"a": None}, {}, True),
    ({"a": "x"}, {}, False),
])
def test_contains(want: object, live: object, expected: bool) -> None:
    assert drift.contains(live, want) is expected


def test_needs_apply_ignores_type_meta_and_status() -> None:
    desired = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"x": 1}}
    live = {"metadata": {"name": "s", "uid": "u"}, "spec": {"x": 1, "y": 2}, "status": {}}
    assert not drift.needs_apply(desired, live)
    assert drift.needs_apply(desired, None)
    assert drift.needs_apply(desired, {**live, "spec": {"x": 3}})


def _pod(rev: str, *, ready: bool = False, init_term: dict | None = None, waiting: str | None = None,
         created: str = "2026-11-23T11:59:00Z", sched_msg: str | None = None, started: str | None = None) -> dict:
    st: dict = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if init_term:
        st["initContainerStatuses"] = [{"name": "model-loader", "state": {"terminated": init_term}}]
    if waiting:
        st["containerStatuses"] = [{"name": "triton", "state": {"waiting": {"reason": waiting, "message": "m"}}}]
    if started:
        st["containerStatuses"] = [{"name": "triton", "state": {"running": {"startedAt": started}}}]
    if sched_msg:
        st["conditions"].append({"type": "PodScheduled", "status": "False", "message": sched_msg})
    return {"metadata": {"labels": {"modeldeploy.io/revision": rev}, "creationTimestamp": created}, "status": st}


def _dep(rev: str, replicas: int) -> dict:
    return {"metadata": {"name": f"m-{rev}", "uid": "u", "labels": {"modeldeploy.io/revision": rev,
                                                                     "app.kubernetes.io/version": "7"}},
            "spec": {"replicas": replicas}, "status": {"replicas": replicas}}


def test_loader_termination_message_is_the_failure() -> None:
    term = {"exitCode": 1, "message": "fetching...\nsha256 mismatch for s3://m/model.onnx: got ab12, want cd34\n"}
    s = observe.summarise([_dep("a", 1)], [_pod("a", init_term=term)], NOW)["a"]
    assert s.load_failure == "model-loader: sha256 mismatch for s3://m/model.onnx: got ab12, want cd34"
    assert s.ready == 0 and s.model_version == "7"


def test_image_pull_trouble_and_unschedulable_and_startup_age() -> None:
    pods = [_pod("a", waiting="ImagePullBackOff"), _pod("b", sched_msg="0/3 nodes: Insufficient nvidia.com/gpu"),
            _pod("c", ready=True), _pod("c", created="2026-11-23T11:00:00Z", started="2026-11-23T11:50:00Z")]
    s = observe.summarise([_dep("a", 1), _dep("b", 1), _dep("c", 2)], pods, NOW)
    assert s["a"].trouble.startswith("triton: ImagePullBackOff") and not s["a"].load_failure  # may be imported later
    assert s["a"].trouble_reason == "ImagePullBackOff"
    assert s["b"].unschedulable.endswith("Insufficient nvidia.com/gpu") and not s["b"].load_failure
    # the startup clock runs from the serving container's start, not the pod's creation
    assert s["c"].ready == 1 and s["c"].oldest_starting_seconds == 600


def _status(plan: SwitchPlan, observed: dict[str, RevisionState], current: str = "b", desired: int = 2,
            previous: dict | None = None) -> dict:
    return status.compute(status.StatusInput(
        name="m", namespace="ns", model_name="m", generation=3, current=current, desired_replicas=desired,
        plan=plan, observed=observed, previous=previous or {}, now="2026-11-23T12:00:00Z"))


def rs(rev: str, n: int, ready: int) -> RevisionState:
    return RevisionState(rev, f"m-{rev}", "u", n, n, ready, "1")


def test_status_ready() -> None:
    st = _status(SwitchPlan(replicas={"b": 2}, stable="b"), {"b": rs("b", 2, 2)})
    assert st["phase"] == "Ready" and st["readyReplicas"] == 2 and st["stableRevision"] == "b"
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conds == {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
                     "Progressing": ("False", "RolloutComplete"), "Degraded": ("False", "AsExpected")}
    assert st["canaryRevision"] is None


def test_status_progressing_then_failed_keeps_serving() -> None:
    prog = _status(SwitchPlan(replicas={"a": 1, "b": 1}, stable="a"), {"a": rs("a", 1, 1), "b": rs("b", 1, 0)})
    assert prog["phase"] == "Progressing" and prog["canaryRevision"] == "b"
    failed = _status(SwitchPlan(replicas={"a": 2, "b": 0}, stable="a", failed="b", failure="model-loader: 404"),
                     {"a": rs("a", 2, 2), "b": rs("b", 0, 0)})
    assert failed["phase"] == "Degraded" and failed["message"] == "model-loader: 404"
    conds = {c["type"]: c for c in failed["conditions"]}
    assert conds["ModelLoaded"]["status"] == "False" and conds["ModelLoaded"]["reason"] == "LoadFailed"
    assert "model-loader: 404" in conds["ModelLoaded"]["message"]
    assert conds["Ready"]["status"] == "True"  # the stable revision still serves


def test_status_first_load_failure_is_failed() -> None:
    st = _status(SwitchPlan(replicas={"b": 2}, stable="b", failed="b", failure="model-loader: bad"),
                 {"b": rs("b", 2, 0)})
    assert st["phase"] == "Failed"


def test_transition_time_kept_when_status_unchanged() -> None:
    first = _status(SwitchPlan(replicas={"b": 2}, stable="b"), {"b": rs("b", 2, 2)})
    old = [{**c, "lastTransitionTime": "2026-01-01T00:00:00Z"} for c in first["conditions"]]
    again = _status(SwitchPlan(replicas={"b": 2}, stable="b"), {"b": rs("b", 2, 2)},
                    previous={**first, "conditions": old})
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" for c in again["conditions"])
    assert status.status_patch({**first, "conditions": old}, again) == {}


def test_status_patch_only_changed_keys() -> None:
    assert status.status_patch({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": 3}
    assert status.status_patch({"a": 1}, {"a": 1, "c": None}) == {}
