"""Rollout replica math (pure), in the style of Argo Rollouts' utils/replicaset/canary_test.go:
named cases of replicas x weight x surge x GPUs per pod -> stable/canary pods, then whole rollouts
simulated with pods that take a pass to become Ready, checking availability at every pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from modeldeploy.api import AnalysisSpec, CanaryStep, RolloutSpec
from modeldeploy.rollout import canary
from modeldeploy.rollout.analysis import Counters
from modeldeploy.rollout.canary import Manual, Observation, Phase
from modeldeploy.rollout.replicas import (
    Live,
    Split,
    blocked,
    max_unavailable,
    promotion_targets,
    rollback_targets,
    step_split,
    surge_pods,
    targets,
)


@pytest.mark.parametrize(("name", "desired", "gpus", "surge_gpus", "pods"), [
    ("unset: one pod, the Kubernetes convention", 4, 1, None, 1),
    ("unset with 2-GPU pods: still one pod", 4, 2, None, 1),
    ("budget in GPUs", 4, 1, 2, 2),
    ("budget smaller than a pod", 4, 2, 1, 0),
    ("budget of two 2-GPU pods", 4, 2, 4, 2),
    ("explicit 0: borrow from stable", 4, 1, 0, 0),
    ("CPU pods cost no GPUs", 4, 0, 0, 1),
])
def test_surge_pods(name: str, desired: int, gpus: int, surge_gpus: int | None, pods: int) -> None:
    assert surge_pods(desired, gpus, surge_gpus) == pods, name


@pytest.mark.parametrize(("name", "desired", "surge", "unavailable", "is_blocked"), [
    ("any surge: nothing below desired", 3, 1, 0, False),
    ("no surge, several replicas: one at a time", 3, 0, 1, False),
    ("no surge, one replica: no zero-downtime move", 1, 0, 0, True),
    ("one replica with a surge", 1, 1, 0, False),
])
def test_availability_rule(name: str, desired: int, surge: int, unavailable: int, is_blocked: bool) -> None:
    assert (max_unavailable(desired, surge), blocked(desired, surge)) == (unavailable, is_blocked), name


@pytest.mark.parametrize(("name", "desired", "weight", "surge", "stable", "can"), [
    ("1 replica, default surge: a canary beside the stable pod", 1, 10, 1, 1, 1),
    ("2 replicas, 10%: one canary pod, both stable kept", 2, 10, 1, 2, 1),
    ("2 replicas, 50%: still one canary pod (a stable yardstick stays)", 2, 50, 1, 2, 1),
    ("4 replicas, 10%: at least one canary pod", 4, 10, 1, 4, 1),
    ("4 replicas, 50%: the surge keeps one, another makes room", 4, 50, 1, 3, 2),
    ("10 replicas, 50%, surge 1", 10, 50, 1, 6, 5),
    ("10 replicas, 50%, surge 0", 10, 50, 0, 5, 5),
    ("10 replicas, 10%, surge 2: nobody gives anything up", 10, 10, 2, 10, 1),
    ("3 replicas, 34%: nearest pod, not ceil", 3, 34, 1, 3, 1),
    ("100% is every replica", 4, 100, 1, 0, 4),
])
def test_step_split(name: str, desired: int, weight: int, surge: int, stable: int, can: int) -> None:
    assert step_split(desired, weight, surge) == Split(stable, can), name


@pytest.mark.parametrize(("name", "desired", "goal", "surge", "live", "want"), [
    ("canary grows into the surge first", 4, Split(3, 2), 1, Live(4, 0, 4, 0), Split(4, 1)),
    ("stable gives up a pod only for a Ready canary pod", 4, Split(3, 2), 1, Live(4, 1, 4, 0), Split(4, 1)),
    ("a Ready canary pod lets a stable pod go", 4, Split(3, 2), 1, Live(4, 1, 4, 1), Split(3, 1)),
    ("then the canary takes the room", 4, Split(3, 2), 1, Live(3, 1, 3, 1), Split(3, 2)),
    ("surge 0: one stable pod makes room", 2, Split(1, 1), 0, Live(2, 0, 2, 0), Split(1, 0)),
    ("surge 0: the canary takes it", 2, Split(1, 1), 0, Live(1, 0, 1, 0), Split(1, 1)),
    ("one replica, surge 0: nothing moves", 1, Split(0, 1), 0, Live(1, 0, 1, 0), Split(1, 0)),
    ("stable below the goal grows (replicas went up)", 4, Split(4, 1), 1, Live(2, 1, 2, 1), Split(4, 1)),
])
def test_targets(name: str, desired: int, goal: Split, surge: int, live: Live, want: Split) -> None:
    assert targets(desired, goal, surge, live) == want, name


def test_promotion_and_rollback_keep_every_replica_served() -> None:
    assert promotion_targets(2, 1, Live(2, 1, 2, 1)) == Split(1, 1)  # one canary Ready: one stable goes
    assert promotion_targets(2, 1, Live(1, 2, 1, 1)) == Split(1, 2)  # the second not Ready yet: wait
    assert rollback_targets(4, Live(3, 2, 3, 2)) == Split(4, 2)  # stable back to 4 first
    assert rollback_targets(4, Live(4, 2, 4, 2)) == Split(4, 0)  # then the canary goes
    assert rollback_targets(4, Live(3, 2, 3, 0)) == Split(4, 0)  # a canary with no Ready pod serves nobody


# --- whole rollouts: pods become Ready one pass after they are asked for ------------------------

STEPS = RolloutSpec(steps=(CanaryStep(10, 10), CanaryStep(50, 10)),
                    analysis=AnalysisSpec(interval=5, min_requests=10, failure_limit=1))


@dataclass
class SlowWorld:
    """A pod asked for in one pass is Ready in the next; a removed pod goes at once."""

    desired: int
    stable_spec: int
    canary_spec: int = 0
    stable_ready: int = 0
    canary_ready: int = 0
    canary_errors: bool = False
    served: Counters = field(default_factory=Counters)
    base: Counters = field(default_factory=Counters)

    def observe(self, manual: str | None) -> Observation:
        return Observation(self.desired, 1, self.stable_spec, self.canary_spec, self.stable_ready, self.canary_ready,
                           self.served, self.base, manual=manual)

    def act(self, stable: int, can: int, canary_serving: bool) -> None:
        # Ready pods now: the ones that existed before (capped by the new count), then new ones next pass.
        self.stable_ready = min(self.stable_spec, stable)
        self.canary_ready = min(self.canary_spec, can)
        self.stable_spec, self.canary_spec = stable, can
        n = 10 * self.canary_ready if canary_serving else 0
        fail = n if self.canary_errors else 0
        self.served = Counters(self.served.success + n - fail, self.served.failure + fail, self.served.duration_us + n)
        m = 10 * self.stable_ready
        self.base = Counters(self.base.success + m, 0, self.base.duration_us + m)


def _rollout(desired: int, rollout: RolloutSpec, *, errors: bool = False, manual_at: tuple[int, str] | None = None,
             ) -> tuple[Phase | str, list[tuple[int, int, int]]]:
    """Drive a canary to its end; returns the final phase and (Ready serving pods, all pods, canary
    pods) before every pass."""
    world = SlowWorld(desired, desired, stable_ready=desired, canary_errors=errors)
    state = canary.start("new", "old", rollout, 0.0)
    seen = []
    for tick in range(400):
        now = tick * 1.0
        manual = manual_at[1] if manual_at and tick >= manual_at[0] else None
        d = canary.next_step(state, rollout, world.observe(manual), now)
        serving = world.stable_ready + (world.canary_ready if d.canary_in_main_service else 0)
        seen.append((serving, world.stable_spec + world.canary_spec, world.canary_spec))
        state = d.state
        if state.phase in canary.DONE:
            return state.phase, seen
        world.act(d.stable_replicas, d.canary_replicas, d.canary_in_main_service)
    raise AssertionError(f"never finished: {state}")


@pytest.mark.parametrize("desired", [1, 2, 3, 4, 6])
@pytest.mark.parametrize(("case", "errors", "manual_at", "outcome"), [
    ("good canary", False, None, Phase.PROMOTED),
    ("bad canary", True, None, Phase.ROLLED_BACK),
    ("abort mid-step", False, (12, Manual.ABORT), Phase.ROLLED_BACK),
    ("promote by hand", False, (6, Manual.PROMOTE), Phase.PROMOTED),
])
def test_default_rollouts_never_serve_from_fewer_pods_than_asked(desired: int, case: str, errors: bool,
                                                                 manual_at: tuple[int, str] | None,
                                                                 outcome: str) -> None:
    phase, seen = _rollout(desired, STEPS, errors=errors, manual_at=manual_at)
    assert phase == outcome, case
    assert min(serving for serving, _, _ in seen) >= desired, (case, seen)
    assert max(pods for _, pods, _ in seen) <= desired + 1, (case, seen)  # the default surge: one pod


@pytest.mark.parametrize("desired", [2, 3, 5])
def test_explicit_zero_surge_borrows_one_pod_at_a_time(desired: int) -> None:
    rollout = RolloutSpec(max_surge_gpus=0, steps=STEPS.steps, analysis=STEPS.analysis)
    phase, seen = _rollout(desired, rollout)
    assert phase == Phase.PROMOTED
    assert min(serving for serving, _, _ in seen) == desired - 1  # the documented dip: one pod, never more
    assert max(pods for _, pods, _ in seen) <= desired  # never a GPU more than the stable revision had


def test_one_replica_without_surge_waits_with_a_reason() -> None:
    rollout = RolloutSpec(max_surge_gpus=0, steps=STEPS.steps, analysis=STEPS.analysis)
    world = SlowWorld(1, 1, stable_ready=1)
    state = canary.start("new", "old", rollout, 0.0)
    events = []
    for tick in range(20):
        d = canary.next_step(state, rollout, world.observe(None), float(tick))
        events += [e[1] for e in d.events]
        state = d.state
        world.act(d.stable_replicas, d.canary_replicas, d.canary_in_main_service)
        assert world.stable_ready == 1 and world.canary_spec == 0
    assert state.phase == Phase.PROGRESSING and "maxSurgeGpus" in state.waiting and "Recreate" in state.waiting
    assert events == [canary.Reason.WAITING]  # one event when the wait begins, not one per pass
