"""The canary state machine, step by step (pure): traces of whole rollouts on a simulated world."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from modeldeploy.api import AnalysisSpec, CanaryStep, RolloutSpec, ValidationSpec
from modeldeploy.rollout import canary
from modeldeploy.rollout.analysis import Counters, Thresholds, Verdict, judge
from modeldeploy.rollout.canary import Decision, Manual, Observation, Phase

# maxSurgeGpus 0: the canary borrows stable pods, so the traces' weights are the steps' own.
ROLLOUT = RolloutSpec(max_surge_gpus=0, steps=(CanaryStep(10, 60), CanaryStep(50, 120)),
                      analysis=AnalysisSpec(interval=15, min_requests=50, max_error_rate=0.01,
                                            max_latency_ratio=1.25, failure_limit=2))


@dataclass
class World:
    """Pods become ready at once; each tick every ready pod serves `rps_per_pod` requests."""

    desired: int = 10
    gpus: int = 1
    rps_per_pod: float = 20.0
    canary_error_rate: float = 0.0
    canary_latency_us: float = 10_000
    stable_latency_us: float = 10_000
    stable_spec: int = 10
    canary_spec: int = 0
    canary: Counters = field(default_factory=Counters)
    stable: Counters = field(default_factory=Counters)
    metrics_ok: bool = True
    manual: str | None = None
    validation: tuple[bool, str] | None = None

    def observe(self) -> Observation:
        return Observation(self.desired, self.gpus, self.stable_spec, self.canary_spec, self.stable_spec,
                           self.canary_spec, self.canary if self.metrics_ok else None,
                           self.stable if self.metrics_ok else None, validation=self.validation, manual=self.manual)

    def act(self, d: Decision, seconds: float, canary_in_service: bool) -> None:
        self.stable_spec, self.canary_spec = d.stable_replicas, d.canary_replicas
        n_c = self.rps_per_pod * seconds * self.canary_spec if canary_in_service else 0
        n_s = self.rps_per_pod * seconds * self.stable_spec
        self.canary = Counters(self.canary.success + n_c * (1 - self.canary_error_rate),
                               self.canary.failure + n_c * self.canary_error_rate,
                               self.canary.duration_us + n_c * self.canary_latency_us)
        self.stable = Counters(self.stable.success + n_s, self.stable.failure,
                               self.stable.duration_us + n_s * self.stable_latency_us)


def run(world: World, rollout: RolloutSpec = ROLLOUT, tick: float = 5, max_ticks: int = 200,
        restart_every_tick: bool = False) -> tuple[canary.CanaryState, list[Decision]]:
    now = 1_000.0
    state = canary.start("new", "old", rollout, now)
    trace = []
    for _ in range(max_ticks):
        if restart_every_tick:  # what a restarted operator reads back from status.canary
            state = canary.from_status(canary.to_status(state))
            assert state is not None
        d = canary.next_step(state, rollout, world.observe(), now)
        trace.append(d)
        state = d.state
        if state.phase in canary.DONE:
            break
        world.act(d, tick, d.canary_in_main_service)
        now += tick
    return state, trace


def weights(trace: list[Decision]) -> list[int]:
    out: list[int] = []
    for d in trace:
        w = round(d.weight)
        if w and (not out or out[-1] != w):  # 0: a stable pod made room, no canary pod yet
            out.append(w)
    return out


def reasons(trace: list[Decision]) -> list[str]:
    return [e[1] for d in trace for e in d.events]


def test_happy_path_promotes_through_every_step() -> None:
    state, trace = run(World())
    assert state.phase == Phase.PROMOTED
    w = weights(trace)
    # one pod at a time between steps (surge 0: a stable pod makes room for each canary pod)
    assert w[0] == 10 and 50 in w and w[-1] == 100
    assert w == sorted(w)  # traffic only ever moves toward the canary
    r = reasons(trace)
    assert r.count(canary.Reason.STEP_PASSED) == 2 and r[-1] == canary.Reason.PROMOTED
    assert "Warning" not in [e[0] for d in trace for e in d.events]
    total = sum(d.stable_replicas + d.canary_replicas for d in trace) / len(trace)
    assert all(d.stable_replicas + d.canary_replicas <= 10 for d in trace), total  # GPU budget held


def test_erroring_canary_rolls_back_within_the_first_step() -> None:
    state, trace = run(World(canary_error_rate=0.05))
    assert state.phase == Phase.ROLLED_BACK
    assert max(round(d.weight) for d in trace) == 10
    assert "error rate 5.00% > 1.00%" in state.reason
    fails = [e for d in trace for e in d.events if e[1] == canary.Reason.ANALYSIS and "Fail" in e[2]]
    assert len(fails) == 2  # failureLimit consecutive failures, not one more
    assert trace[-1].canary_replicas == 0 and trace[-1].stable_replicas == 10


def test_slow_canary_rolls_back() -> None:
    state, _ = run(World(canary_latency_us=20_000))
    assert state.phase == Phase.ROLLED_BACK and "latency 2.00x" in state.reason


def test_too_little_traffic_never_promotes() -> None:
    state, _ = run(World(rps_per_pod=0.5), max_ticks=100)
    assert state.phase == Phase.PROGRESSING and state.step == 0
    assert len(state.analyses) == canary.MAX_ANALYSES_KEPT  # judged many times, never a verdict
    assert all(a["verdict"] == Verdict.INCONCLUSIVE for a in state.analyses)


def test_unreadable_metrics_count_as_failures() -> None:
    state, _ = run(World(metrics_ok=False))
    assert state.phase == Phase.ROLLED_BACK and state.reason == "metrics could not be read"


@pytest.mark.parametrize("world", [World(), World(canary_error_rate=0.05), World(rps_per_pod=0.5)],
                         ids=["good", "bad", "quiet"])
def test_restart_at_every_tick_changes_nothing(world: World) -> None:
    a_state, a_trace = run(dataclasses.replace(world), max_ticks=100)
    b_state, b_trace = run(dataclasses.replace(world), max_ticks=100, restart_every_tick=True)
    assert [(d.stable_replicas, d.canary_replicas, d.events) for d in a_trace] == \
           [(d.stable_replicas, d.canary_replicas, d.events) for d in b_trace]
    assert a_state.phase == b_state.phase and a_state.analyses == b_state.analyses


def test_manual_abort_and_promote() -> None:
    now = 0.0
    st = canary.start("new", "old", ROLLOUT, now)
    w = World()
    d = canary.next_step(st, ROLLOUT, dataclasses.replace(w, manual=Manual.ABORT).observe(), now)
    assert d.state.phase == Phase.ROLLING_BACK and d.events[0][1] == canary.Reason.ABORTED
    d = canary.next_step(st, ROLLOUT, dataclasses.replace(w, manual=Manual.PROMOTE).observe(), now)
    assert d.state.phase == Phase.PROMOTING


def test_pause_holds_and_resume_continues() -> None:
    w = World()
    st = canary.start("new", "old", ROLLOUT, 0)
    d = canary.next_step(st, ROLLOUT, w.observe(), 0)
    w.act(d, 5, True)
    w.manual = Manual.PAUSE
    paused = canary.next_step(d.state, ROLLOUT, w.observe(), 5)
    assert paused.state.phase == Phase.PAUSED
    held = canary.next_step(paused.state, ROLLOUT, w.observe(), 500)
    assert (held.stable_replicas, held.canary_replicas) == (w.stable_spec, w.canary_spec)
    assert held.state.step == 0
    w.manual = None
    resumed = canary.next_step(held.state, ROLLOUT, w.observe(), 505)
    assert resumed.state.phase == Phase.PROGRESSING and resumed.events[0][1] == canary.Reason.RESUMED


def test_load_failure_rolls_back_at_once() -> None:
    st = canary.start("new", "old", ROLLOUT, 0)
    obs = dataclasses.replace(World().observe(), load_failure="model-loader: 404 Not Found")
    d = canary.next_step(st, ROLLOUT, obs, 0)
    assert d.state.phase == Phase.ROLLING_BACK and d.canary_replicas == 0 and d.stable_replicas == 10


VALIDATED = dataclasses.replace(ROLLOUT, validation=ValidationSpec("s3://m/val.npz", min_accuracy=0.95),
                                max_surge_gpus=None)  # the default: the validated pod is an extra one


def test_validation_gate_keeps_live_traffic_away_until_it_passes() -> None:
    w = World()
    st = canary.start("new", "old", VALIDATED, 0)
    assert st.phase == Phase.VALIDATING
    d = canary.next_step(st, VALIDATED, w.observe(), 0)
    assert d.canary_replicas == 1 and not d.canary_in_main_service and not d.run_validation
    w.act(d, 5, False)
    d = canary.next_step(d.state, VALIDATED, w.observe(), 5)
    assert d.run_validation and not d.canary_in_main_service
    w.validation = (True, "accuracy 0.978 >= 0.95 on 360 samples")
    d = canary.next_step(d.state, VALIDATED, w.observe(), 10)
    assert d.state.phase == Phase.PROGRESSING and d.events[0][1] == canary.Reason.VALIDATION_PASSED


def test_validation_failure_rolls_back_with_reason() -> None:
    w = dataclasses.replace(World(), canary_spec=1, validation=(False, "accuracy 0.61 < 0.95"))
    d = canary.next_step(canary.start("new", "old", VALIDATED, 0), VALIDATED, w.observe(), 0)
    assert d.state.phase == Phase.ROLLING_BACK and d.events[0][1] == canary.Reason.VALIDATION_FAILED


def test_judge_orders_checks() -> None:
    t = Thresholds(min_requests=10, max_error_rate=0.01, max_latency_ratio=1.25, max_latency_s=0.05)
    base = Counters(100, 0, 100 * 10_000)
    assert judge(Counters(5, 0, 0), base, t).verdict == Verdict.INCONCLUSIVE
    assert judge(Counters(90, 10, 100 * 50_000), base, t).reason.startswith("error rate")
    slow = judge(Counters(100, 0, 100 * 60_000), Counters(100, 0, 100 * 55_000), t)
    assert slow.reason.startswith("mean latency 60.0 ms")  # no p99 from Triton here: the means
    assert judge(Counters(100, 0, 100 * 11_000), base, t).verdict == Verdict.PASS


def test_counter_reset_counts_from_zero() -> None:
    assert Counters(5, 1, 60).minus(Counters(100, 3, 900)) == Counters(5, 1, 60)


def test_window_is_taken_pod_by_pod_when_pods_come_and_go() -> None:
    """Scaled down mid-step: the pod that left takes its requests with it (the sums alone dropped
    and looked like a reset: the remaining pods' whole lifetime, old failures included, was judged)."""
    before = Counters.of_pods({"p1": (1000, 50, 1e6), "p2": (1000, 0, 1e6), "p3": (1000, 0, 1e6)})
    after = Counters.of_pods({"p1": (1100, 50, 1.1e6), "p2": (1100, 0, 1.1e6)})  # p3 removed
    assert after.minus(before) == Counters(200, 0, 2e5)
    assert Counters(after.success, after.failure, after.duration_us).minus(
        Counters(before.success, before.failure, before.duration_us)) == Counters(2200, 0, 2.2e6)  # sums: wrong
    grown = Counters.of_pods({"p1": (1100, 50, 1.1e6), "p4": (30, 1, 3e4)})  # p4 new: counts from 0
    assert grown.minus(before) == Counters(130, 1, 1.3e5)
    restarted = Counters.of_pods({"p1": (20, 0, 2e4)})  # p1's Triton restarted: its counter went down
    assert restarted.minus(before) == Counters(20, 0, 2e4)
    assert after.minus(Counters()) == Counters(2200, 50, 2.2e6)  # first sample of a step


def test_per_pod_samples_survive_a_restart_and_old_status_still_works() -> None:
    sample = Counters.of_pods({"p2": (7, 1, 80), "p1": (5, 0, 50)})
    assert Counters.from_dict(sample.to_dict()) == sample
    old = Counters.from_dict({"success": 12, "failure": 1, "durationUs": 130})  # written by an older operator
    assert old.pods == () and sample.minus(old) == Counters(0, 0, 0)


@pytest.mark.parametrize(("desired", "weight", "pods"), [
    (3, 34, 1), (3, 67, 2), (3, 99, 2), (3, 100, 3), (2, 50, 1), (1, 10, 1), (10, 10, 1), (10, 15, 2),
    (10, 1, 1), (4, 25, 1), (4, 75, 3), (0, 50, 0), (5, 0, 0),
])
def test_canary_pods_round_to_the_nearest_pod_and_keep_a_stable_one(desired: int, weight: int, pods: int) -> None:
    from modeldeploy.rollout.replicas import canary_pods

    assert canary_pods(desired, weight) == pods


def test_a_clearly_failing_window_is_judged_before_its_interval_ends() -> None:
    # 2 s ticks, 15 s interval: 20 canary requests a second, half failing, give minRequests (50) of
    # bad news in under 3 s; two such windows roll back long before two intervals (30 s).
    state, trace = run(World(canary_error_rate=0.5), tick=2)
    assert state.phase == Phase.ROLLED_BACK and "error rate 50.00%" in state.reason
    ticks_to_rollback = next(i for i, d in enumerate(trace) if d.state.phase == Phase.ROLLING_BACK)
    assert ticks_to_rollback * 2 < ROLLOUT.analysis.interval, ticks_to_rollback
    assert [a["verdict"] for a in state.analyses] == [Verdict.FAIL, Verdict.FAIL]


def test_a_passing_window_still_waits_for_the_whole_interval() -> None:
    state, _ = run(World(), tick=2, max_ticks=12)  # 24 s: one 15 s interval after the step started
    assert [a["verdict"] for a in state.analyses] == [Verdict.PASS]  # no early verdict on good news


def test_a_canary_nobody_calls_ends_at_its_progress_deadline() -> None:
    rollout = dataclasses.replace(ROLLOUT, progress_deadline=120)
    state, trace = run(World(rps_per_pod=0.5), rollout=rollout, max_ticks=100)
    assert state.phase == Phase.ROLLED_BACK and state.cause == canary.Reason.PROGRESS_DEADLINE
    assert "no progress for 120s" in state.reason and "minRequests" in state.reason
    assert trace[-1].canary_replicas == 0


def test_verdicts_are_progress_so_a_judged_canary_never_hits_the_deadline() -> None:
    rollout = dataclasses.replace(ROLLOUT, progress_deadline=40)  # shorter than the steps' pauses
    state, _ = run(World(), rollout=rollout)
    assert state.phase == Phase.PROMOTED


def test_replicas_zero_mid_canary_holds_without_deciding_and_resumes() -> None:
    w = World(desired=4, stable_spec=4)
    state = canary.start("new", "old", ROLLOUT, 0.0)
    d = canary.next_step(state, ROLLOUT, w.observe(), 0.0)
    w.act(d, 5, True)
    w.desired = 0
    events = []
    for t in range(1, 200):  # far past the progress deadline: a model nobody asked to run is not judged
        d = canary.next_step(d.state, ROLLOUT, w.observe(), t * 5.0)
        events += [e[1] for e in d.events]
        w.act(d, 5, True)
    assert d.state.phase == Phase.PROGRESSING and "replicas is 0" in d.state.waiting
    assert (d.stable_replicas, d.canary_replicas) == (0, 0) and events == [canary.Reason.WAITING]
    w.desired = 4
    d = canary.next_step(d.state, ROLLOUT, w.observe(), 1000.0)
    assert d.state.waiting == "" and d.stable_replicas + d.canary_replicas >= 3


def test_zero_canary_requests_never_pass_even_with_min_requests_zero() -> None:
    rollout = dataclasses.replace(ROLLOUT, analysis=dataclasses.replace(ROLLOUT.analysis, min_requests=0),
                                  progress_deadline=100)
    state, _ = run(World(rps_per_pod=0.0), rollout=rollout, max_ticks=100)
    assert state.phase == Phase.ROLLED_BACK and state.cause == canary.Reason.PROGRESS_DEADLINE


def test_a_step_younger_than_tritons_p99_window_is_judged_on_means() -> None:
    """Triton's p99 covers the last 48-60 s: a fresh step's window still holds the pods' cold first
    requests (and after validation the Job's batches); after the window, p99s again."""
    st = dataclasses.replace(canary.start("new", "old", VALIDATED, 0.0), phase=Phase.PROGRESSING, step_started_at=100.0,
                             last_analysis_at=100.0, validation={"verdict": "Passed", "message": "ok"})
    slow_p99 = Counters(100, 0, 100 * 10_000, p99_us=400_000)  # cold starts or validation batches
    stable = Counters(1000, 0, 1000 * 10_000, p99_us=20_000)
    canary_w, stable_w = canary._windows(st, slow_p99, stable, 130.0)
    assert canary_w.p99_us is None and stable_w.p99_us is None  # 30 s into the step: means
    canary_w, _ = canary._windows(st, slow_p99, stable, 170.0)
    assert canary_w.p99_us == 400_000  # past the window: p99 again
    unvalidated = dataclasses.replace(st, validation=None)
    assert canary._windows(unvalidated, slow_p99, stable, 130.0)[0].p99_us is None
    assert canary._windows(unvalidated, slow_p99, stable, 160.0)[0].p99_us == 400_000
