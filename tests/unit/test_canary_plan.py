"""The canary as the reconciler sees it (pure): plans, services, status, restarts through status."""

from __future__ import annotations

import dataclasses

import pytest

from modeldeploy.api import AnalysisSpec, CanaryStep, RolloutSpec, ValidationSpec
from modeldeploy.planning import canary_plan, status
from modeldeploy.planning.canary_plan import CanaryInput
from modeldeploy.planning.observe import RevisionState
from modeldeploy.planning.switch import SwitchInput
from modeldeploy.rollout import canary
from modeldeploy.rollout.analysis import Counters
from modeldeploy.rollout.canary import Manual, Phase

ROLLOUT = RolloutSpec(max_surge_gpus=0, steps=(CanaryStep(10, 20.0), CanaryStep(50, 20.0)),
                      analysis=AnalysisSpec(interval=10.0, min_requests=20, failure_limit=2))


def rs(rev: str, spec: int, ready: int, failure: str = "") -> RevisionState:
    return RevisionState(revision=rev, deployment=f"m-{rev}", uid=f"uid-{rev}", spec_replicas=spec, replicas=spec,
                         ready=ready, model_version=rev, load_failure=failure)


def sw(**kw: object) -> SwitchInput:
    base = dict(desired_replicas=10, gpus_per_pod=1, strategy="Canary", current="new",
                stable="old", failed=None, startup_timeout_seconds=600.0)
    base.update(kw)
    return SwitchInput(**base)  # type: ignore[arg-type]


@dataclasses.dataclass
class World:
    """Pods follow the plan at once; each ready pod serves 5 requests a second."""

    observed: dict[str, RevisionState]
    error_rate: float = 0.0
    canary: Counters = dataclasses.field(default_factory=Counters)
    stable: Counters = dataclasses.field(default_factory=Counters)

    def act(self, plan: canary_plan.CanaryPlan, seconds: float) -> None:
        self.observed = {rev: rs(rev, n, n) for rev, n in plan.plan.replicas.items() if rev not in plan.plan.retire}
        c = self.observed.get("new", rs("new", 0, 0)).ready * 5 * seconds
        s = self.observed.get("old", rs("old", 0, 0)).ready * 5 * seconds
        if plan.main_service_revision is not None:
            c = 0
        self.canary = Counters(self.canary.success + c * (1 - self.error_rate),
                               self.canary.failure + c * self.error_rate, self.canary.duration_us + c * 1000)
        self.stable = Counters(self.stable.success + s, 0, self.stable.duration_us + s * 1000)


def drive(world: World, rollout: RolloutSpec = ROLLOUT, ticks: int = 60, restart: bool = True,
          manual: str | None = None) -> tuple[list[canary_plan.CanaryPlan], dict[str, object]]:
    """Reconcile passes every 2 s; status.canary is the only memory, as in the operator."""
    st: dict[str, object] = {"stableRevision": "old"}
    plans = []
    for i in range(ticks):
        now = 1000.0 + 2 * i
        state = canary.from_status(st.get("canary")) if restart else (plans[-1].state if plans else None)  # type: ignore[arg-type]
        inp = CanaryInput(switch=sw(stable=st.get("stableRevision"), failed=st.get("failedRevision")),
                          rollout=rollout, state=state, now=now, canary_counters=world.canary,
                          stable_counters=world.stable, manual=manual)
        p = canary_plan.plan(inp, world.observed)
        plans.append(p)
        st = {"stableRevision": p.plan.stable, "failedRevision": p.plan.failed,
              "canary": canary.to_status(p.state, p.decision) if p.state else None}
        world.act(p, 2)
        if p.plan.stable == "new" or p.plan.failed == "new":
            break
    return plans, st


def test_good_canary_is_promoted_step_by_step_and_the_old_revision_retired() -> None:
    plans, _ = drive(World({"old": rs("old", 10, 10)}))
    last = plans[-1]
    assert last.plan.promoted and last.plan.stable == "new" and "old" in last.plan.retire
    weights = [round(p.decision.weight) for p in plans if p.decision and p.decision.weight]
    assert weights[0] == 10 and 50 in weights and weights == sorted(weights)
    assert all(sum(p.plan.replicas.values()) <= 10 for p in plans)  # maxSurgeGpus 0: never more GPUs
    reasons = [e[1] for p in plans for e in p.events]
    assert reasons[0] == canary.Reason.STARTED and reasons.count(canary.Reason.STEP_PASSED) == 2
    assert reasons[-1] == canary.Reason.PROMOTED


def test_restarting_every_pass_is_the_same_rollout() -> None:
    a, _ = drive(World({"old": rs("old", 10, 10)}), restart=False)
    b, _ = drive(World({"old": rs("old", 10, 10)}), restart=True)
    assert [(p.plan.replicas, p.events) for p in a] == [(p.plan.replicas, p.events) for p in b]


def test_bad_canary_is_rolled_back_and_recorded_as_failed() -> None:
    plans, st = drive(World({"old": rs("old", 10, 10)}, error_rate=0.2))
    last = plans[-1]
    assert last.plan.failed == "new" and last.plan.stable == "old"
    assert last.plan.replicas == {"old": 10, "new": 0}
    assert max(round(p.decision.weight) for p in plans if p.decision) == 10
    assert st["canary"]["phase"] == Phase.ROLLED_BACK  # type: ignore[index]
    assert st["canary"]["rollbackReason"] == canary.Reason.ANALYSIS_FAILED  # type: ignore[index]


def test_validation_keeps_the_canary_out_of_the_main_service() -> None:
    rollout = dataclasses.replace(ROLLOUT, validation=ValidationSpec("s3://m/val.npz", min_accuracy=0.9),
                                  max_surge_gpus=None)
    p = canary_plan.plan(CanaryInput(sw(), rollout, None, 0.0), {"old": rs("old", 10, 10)})
    assert p.state is not None and p.state.phase == Phase.VALIDATING
    assert p.main_service_revision == "old" and p.plan.replicas == {"old": 10, "new": 1}  # the surge pod
    p2 = canary_plan.plan(CanaryInput(sw(), rollout, p.state, 5.0), {"old": rs("old", 9, 9), "new": rs("new", 1, 1)})
    assert p2.run_validation and p2.main_service_revision == "old"
    p3 = canary_plan.plan(CanaryInput(sw(), rollout, p2.state, 9.0, validation=(True, "accuracy 0.98 >= 0.9")),
                          {"old": rs("old", 9, 9), "new": rs("new", 1, 1)})
    assert p3.state is not None and p3.state.phase == Phase.PROGRESSING and p3.main_service_revision is None
    assert p3.state.validation == {"verdict": "Passed", "message": "accuracy 0.98 >= 0.9"}


def test_spec_change_mid_canary_starts_over_and_retires_the_intermediate_revision() -> None:
    world = World({"old": rs("old", 10, 10)})
    plans, _ = drive(world, ticks=8)
    mid = plans[-1].state
    assert mid is not None and mid.phase == Phase.PROGRESSING
    p = canary_plan.plan(CanaryInput(sw(current="newer"), ROLLOUT, mid, 2000.0), world.observed)
    assert p.state is not None and p.state.revision == "newer" and p.state.step == 0
    assert "new" in p.plan.retire and p.plan.replicas.get("newer") == 1
    assert [e[1] for e in p.events][:2] == [canary.Reason.STARTED, canary.Reason.STARTED]


def test_spec_back_to_the_stable_revision_abandons_the_canary() -> None:
    world = World({"old": rs("old", 10, 10)})
    plans, _ = drive(world, ticks=5)
    p = canary_plan.plan(CanaryInput(sw(current="old"), ROLLOUT, plans[-1].state, 2000.0), world.observed)
    assert p.state is None and "new" in p.plan.retire and p.plan.replicas == {"old": 10}
    assert p.events[0][1] == canary.Reason.ABANDONED


def test_manual_abort_rolls_back_with_its_reason() -> None:
    plans, st = drive(World({"old": rs("old", 10, 10)}), manual=Manual.ABORT)
    assert plans[-1].plan.failed == "new"
    assert st["canary"]["rollbackReason"] == canary.Reason.ABORTED  # type: ignore[index]


def test_load_failure_during_a_canary_rolls_back() -> None:
    observed = {"old": rs("old", 9, 9), "new": rs("new", 1, 0, failure="model-loader: 404 Not Found")}
    state = canary.start("new", "old", ROLLOUT, 0.0)
    p = canary_plan.plan(CanaryInput(sw(), ROLLOUT, state, 1.0), observed)
    assert p.state is not None and p.state.phase == Phase.ROLLING_BACK and p.plan.replicas == {"old": 10, "new": 0}


def test_recreate_and_first_deploys_never_canary() -> None:
    observed = {"old": rs("old", 10, 10)}
    assert canary_plan.plan(CanaryInput(sw(strategy="Recreate"), ROLLOUT, None, 0.0), observed).state is None
    first = canary_plan.plan(CanaryInput(sw(stable=None), ROLLOUT, None, 0.0), {})
    assert first.state is None and first.plan.replicas == {"new": 10}


@pytest.mark.parametrize(("phase", "started", "last", "now", "expected"), [
    (Phase.PROGRESSING, None, None, 0.0, True),     # step start: the baseline sample
    (Phase.PROGRESSING, 0.0, 0.0, 5.0, True),       # mid-interval: a window that already fails is judged
    (Phase.PROGRESSING, 0.0, 0.0, 10.0, True),      # analysis due
    (Phase.VALIDATING, None, None, 0.0, False),
    (Phase.PROMOTING, 0.0, 0.0, 100.0, False),
])
def test_metrics_are_read_while_a_step_runs(phase: str, started: float | None, last: float | None,
                                                           now: float, expected: bool) -> None:
    state = canary.CanaryState(phase=phase, revision="new", stable="old", started_at=0.0, step_started_at=started,
                               last_analysis_at=last)
    assert canary_plan.needs_metrics(state, ROLLOUT, now) is expected


def test_status_conditions_name_a_rollback_by_its_cause() -> None:
    plans, _ = drive(World({"old": rs("old", 10, 10)}, error_rate=0.2))
    last = plans[-1]
    computed = status.compute(status.StatusInput(
        name="m", namespace="ns", model_name="m", generation=2, current="new", desired_replicas=10, plan=last.plan,
        observed={"old": rs("old", 10, 10), "new": rs("new", 0, 0)}, previous={}, now="2026-01-01T00:00:00Z",
        canary=last.state))
    conds = {c["type"]: c for c in computed["conditions"]}
    assert computed["phase"] == "Degraded" and computed["failedRevision"] == "new"
    assert conds["Degraded"]["reason"] == canary.Reason.ANALYSIS_FAILED
    assert "error rate" in conds["Degraded"]["message"]
    assert conds["Progressing"]["status"] == "False" and "rolled back" in conds["Progressing"]["message"]


def test_status_patch_removes_canary_keys_that_are_gone() -> None:
    before = {"canary": {"phase": "Paused", "pausedFrom": "Progressing", "step": 1}, "phase": "Progressing"}
    after = {"canary": {"phase": "Progressing", "step": 1}, "phase": "Progressing"}
    assert status.status_patch(before, after) == {"canary": {"phase": "Progressing", "pausedFrom": None}}
    assert status.status_patch(after, after) == {}
    assert status.status_patch(after, {"canary": None}) == {"canary": None}


class Source:
    """A metrics source answering from a table (the boundary a unit test may fake)."""

    def __init__(self, table: dict[str, object]) -> None:
        self.table = table

    def pods(self, namespace: str, pods: dict[str, str], model: str) -> dict[str, object]:
        return {name: self.table.get(name) for name in pods}


def _pod(name: str, rev: str, ready: bool = True) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {"modeldeploy.io/revision": rev}},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_revision_counters_sum_ready_pods_and_refuse_partial_data() -> None:
    from modeldeploy.metrics.parse import TritonMetrics
    from modeldeploy.reconciler import revision_counters

    pods = [_pod("a1", "a"), _pod("a2", "a"), _pod("a3", "a", ready=False), _pod("b1", "b")]
    m = TritonMetrics(success=10, failure=1, request_duration_us=500)
    got = revision_counters(Source({"a1": m, "a2": m, "a3": None}), pods, "a", "m", "ns")  # type: ignore[arg-type]
    assert got == Counters(success=20, failure=2, duration_us=1000, pods=(("a1", 10, 1, 500), ("a2", 10, 1, 500)))
    assert revision_counters(Source({"b1": None}), pods, "b", "m", "ns") is None  # type: ignore[arg-type]
    assert revision_counters(Source({}), pods, "c", "m", "ns") == Counters()  # type: ignore[arg-type]
