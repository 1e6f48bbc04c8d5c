"""Every condition comes from one function (planning/status.compute); a table of every phase checks
what each says and that they never contradict each other."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy.planning import status
from modeldeploy.planning.observe import RevisionState
from modeldeploy.planning.switch import SwitchPlan
from modeldeploy.rollout.canary import CanaryState

CONFLICT = "Service ns/m-canary already exists, created by someone else: left alone"


def rs(rev: str, n: int, ready: int, *, failure: str = "", trouble: str = "", reason: str = "",
       unsched: str = "") -> RevisionState:
    return RevisionState(rev, f"m-{rev}", "u", n, n, ready, "1", load_failure=failure, unschedulable=unsched,
                         trouble=trouble, trouble_reason=reason)


def canary_state(phase: str, **kw: Any) -> CanaryState:
    return CanaryState(phase=phase, revision="b", stable="a", started_at=0.0, **kw)


# name, plan, observed, desired, canary, conflicts -> phase, {condition: (status, reason)}
TABLE: list[tuple[str, SwitchPlan, dict[str, RevisionState], int, CanaryState | None, tuple[str, ...], str,
                  dict[str, tuple[str, str]]]] = [
    ("first revision loading", SwitchPlan({"b": 2}, stable="b"), {"b": rs("b", 2, 0)}, 2, None, (), "Loading",
     {"Ready": ("False", "NoReadyReplicas"), "ModelLoaded": ("Unknown", "Loading"),
      "Progressing": ("True", "RolloutInProgress"), "Degraded": ("False", "AsExpected")}),
    ("first revision cannot load", SwitchPlan({"b": 2}, stable="b", failed="b", failure="model-loader: sha256"),
     {"b": rs("b", 2, 0)}, 2, None, (), "Failed",
     {"Ready": ("False", "NoReadyReplicas"), "ModelLoaded": ("False", "LoadFailed"),
      "Progressing": ("False", "RolloutFailed"), "Degraded": ("True", "LoadFailed")}),
    ("first revision waits for an image", SwitchPlan({"b": 1}, stable="b"),
     {"b": rs("b", 1, 0, trouble="triton: ErrImagePull (retrying)", reason="ErrImagePull")}, 1, None, (), "Loading",
     {"Ready": ("False", "NoReadyReplicas"), "ModelLoaded": ("Unknown", "ErrImagePull"),
      "Progressing": ("True", "RolloutInProgress"), "Degraded": ("True", "ErrImagePull")}),
    ("ready", SwitchPlan({"b": 2}, stable="b"), {"b": rs("b", 2, 2)}, 2, None, (), "Ready",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
      "Progressing": ("False", "RolloutComplete"), "Degraded": ("False", "AsExpected")}),
    ("one pod OOM-killed, restarting", SwitchPlan({"b": 2}, stable="b"),
     {"b": rs("b", 2, 1, trouble="triton: OOMKilled (exit code 137, 1 restart(s))", reason="OOMKilled")}, 2, None, (),
     "Degraded",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
      "Progressing": ("False", "RolloutComplete"), "Degraded": ("True", "OOMKilled")}),
    ("a pod cannot be scheduled", SwitchPlan({"b": 2}, stable="b"),
     {"b": rs("b", 2, 1, unsched="0/1 nodes: Insufficient nvidia.com/gpu")}, 2, None, (), "Degraded",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
      "Progressing": ("False", "RolloutComplete"), "Degraded": ("True", "Unschedulable")}),
    ("a child's name is taken", SwitchPlan({"b": 2}, stable="b"), {"b": rs("b", 2, 2)}, 2, None, (CONFLICT,),
     "Degraded",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
      "Progressing": ("False", "RolloutComplete"), "Degraded": ("True", "OwnershipConflict")}),
    ("scaled to zero", SwitchPlan({"b": 0}, stable="b"), {"b": rs("b", 0, 0)}, 0, None, (), "Pending",
     {"Ready": ("False", "ScaledToZero"), "ModelLoaded": ("Unknown", "Loading"),
      "Progressing": ("False", "RolloutComplete"), "Degraded": ("False", "AsExpected")}),
    ("canary step", SwitchPlan({"a": 2, "b": 1}, stable="a"), {"a": rs("a", 2, 2), "b": rs("b", 1, 1)}, 2,
     canary_state("Progressing"), (), "Progressing",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("True", "ModelLoaded"),
      "Progressing": ("True", "CanaryInProgress"), "Degraded": ("False", "AsExpected")}),
    ("canary blocked: one replica, no surge", SwitchPlan({"a": 1, "b": 0}, stable="a"),
     {"a": rs("a", 1, 1)}, 1, canary_state("Progressing", waiting="1 replica and no surge budget"), (), "Progressing",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("Unknown", "Loading"),
      "Progressing": ("False", "RolloutBlocked"), "Degraded": ("False", "AsExpected")}),
    ("canary pods wait for their image", SwitchPlan({"a": 2, "b": 1}, stable="a"),
     {"a": rs("a", 2, 2), "b": rs("b", 1, 0, trouble="triton: ImagePullBackOff (retrying)", reason="ImagePullBackOff")},
     2, canary_state("Progressing"), (), "Progressing",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("Unknown", "ImagePullBackOff"),
      "Progressing": ("True", "CanaryInProgress"), "Degraded": ("False", "AsExpected")}),
    ("canary rolled back", SwitchPlan({"a": 2, "b": 0}, stable="a", failed="b", failure="error rate 5% > 1%"),
     {"a": rs("a", 2, 2), "b": rs("b", 0, 0)}, 2,
     canary_state("RolledBack", cause="CanaryAnalysisFailed", reason="error rate 5% > 1%"), (), "Degraded",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("False", "CanaryAnalysisFailed"),
      "Progressing": ("False", "RolloutFailed"), "Degraded": ("True", "CanaryAnalysisFailed")}),
    ("canary could not load", SwitchPlan({"a": 2, "b": 0}, stable="a", failed="b", failure="model-loader: 404"),
     {"a": rs("a", 2, 2), "b": rs("b", 0, 0)}, 2, canary_state("RolledBack", cause="LoadFailed"), (), "Degraded",
     {"Ready": ("True", "Serving"), "ModelLoaded": ("False", "LoadFailed"),
      "Progressing": ("False", "RolloutFailed"), "Degraded": ("True", "LoadFailed")}),
]


@pytest.mark.parametrize(("name", "plan", "observed", "desired", "can", "conflicts", "phase", "conditions"), TABLE,
                         ids=[t[0] for t in TABLE])
def test_every_phase(name: str, plan: SwitchPlan, observed: dict[str, RevisionState], desired: int,
                     can: CanaryState | None, conflicts: tuple[str, ...], phase: str,
                     conditions: dict[str, tuple[str, str]]) -> None:
    st = status.compute(status.StatusInput(
        name="m", namespace="ns", model_name="m", generation=1, current="b", desired_replicas=desired, plan=plan,
        observed=observed, previous={}, now="2026-12-02T12:00:00Z", canary=can, conflicts=conflicts))
    got = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert (st["phase"], got) == (phase, conditions), name
    _never_contradict(st)
    if conflicts:
        assert st["warnings"] == list(conflicts) and CONFLICT in st["message"]


def _never_contradict(st: dict[str, Any]) -> None:
    c = {x["type"]: x for x in st["conditions"]}
    complete = c["Progressing"]["reason"] == "RolloutComplete"
    # "the rollout is complete" only beside a model that serves (or was asked to serve nothing)
    assert not complete or c["Ready"]["status"] == "True" or c["Ready"]["reason"] == "ScaledToZero", st
    # a model that failed to load is never "serving" in any condition
    if c["ModelLoaded"]["status"] == "False":
        assert c["Degraded"]["status"] == "True" and c["Progressing"]["reason"] != "RolloutComplete", st
    # Ready=True needs ready pods; Failed phase needs none
    assert (c["Ready"]["status"] == "True") == (st["readyReplicas"] > 0 and c["Ready"]["reason"] == "Serving"), st
    assert st["phase"] != "Failed" or st["readyReplicas"] == 0, st
    # no success message beside a failure
    assert not (c["Degraded"]["status"] == "False" and st["message"]), st
