"""The autoscaling recommender on simulated load (pure): steady, spikes, oscillation, gaps, GPU limits."""

from __future__ import annotations

import itertools
import math

from modeldeploy.api import AutoscalingSpec
from modeldeploy.autoscale.recommender import Memory, Sample, recommend

SPEC = AutoscalingSpec(enabled=True, min_replicas=1, max_replicas=20, metric="inferenceRate", target=100.0,
                       target_text="100", scale_down_delay=300, stable_window=60, panic_window=6)
TICK = 2.0


def simulate(load_at: callable, seconds: float, start: int = 2, spec: AutoscalingSpec = SPEC,
             missing: set[int] | None = None) -> list[tuple[float, int, str]]:
    """Every tick, each ready pod reports total load / pods; returns (t, replicas, mode) at each change."""
    replicas, memory, samples = start, Memory(), []
    changes = [(0.0, replicas, "start")]
    t = 0.0
    while t < seconds:
        per_pod = load_at(t) / replicas
        values = tuple(None if missing and i in missing else per_pod for i in range(replicas))
        samples = [s for s in samples if t - s.at <= spec.stable_window] + [Sample(t, values)]
        rec = recommend(spec, replicas, samples, t, memory)
        memory = rec.memory
        if rec.desired != replicas:
            replicas = rec.desired
            changes.append((t, replicas, rec.mode))
        t += TICK
    return changes


def test_steady_load_settles_at_the_right_size() -> None:
    changes = simulate(lambda t: 800, 600)
    assert changes[-1][1] == 8
    assert len(changes) <= 3


def test_spike_enters_panic_and_scales_within_two_ticks() -> None:
    changes = simulate(lambda t: 200 if t < 100 else 1600, 200)
    first_up = next(c for c in changes if c[0] >= 100)
    assert first_up[0] - 100 <= 2 * TICK and first_up[2] == "panic"
    assert changes[-1][1] == 16


def test_oscillating_load_does_not_flap() -> None:
    # 10 s high / 10 s low, for 10 minutes: the stable window averages it, scale-down waits.
    changes = simulate(lambda t: 900 if (t // 10) % 2 == 0 else 300, 600, start=6)
    assert len(changes) <= 4, changes


def test_scale_down_waits_for_the_delay_then_halves() -> None:
    changes = simulate(lambda t: 1000 if t < 60 else 100, 1200, start=10)
    downs = [c for c in changes if c[0] > 60]
    assert downs, changes
    assert downs[0][0] >= 60 + 300 - TICK  # not before the delay
    sizes = [10] + [c[1] for c in downs]
    assert all(b >= math.floor(a / 2) for a, b in itertools.pairwise(sizes))  # at most halve per step
    assert downs[-1][1] == 1


def test_a_pod_missing_from_the_scrape_is_not_zero_load() -> None:
    with_gap = simulate(lambda t: 800, 300, start=8, missing={0, 1})
    assert with_gap[-1][1] == 8  # the others still report 100 each: no scale-down


def test_no_metrics_holds() -> None:
    rec = recommend(SPEC, 3, [Sample(0, (None, None, None))], 0, Memory())
    assert rec.desired == 3 and rec.mode == "hold"


def test_gpu_capacity_limit_holds_and_says_so() -> None:
    rec = recommend(SPEC, 4, [Sample(0, (400.0,) * 4)], 0, Memory(), pending_unschedulable=2)
    assert rec.desired == 4 and rec.limited_by_capacity and "wait for GPUs" in rec.reason


def test_bounds_and_queue_time_reason() -> None:
    spec = AutoscalingSpec(enabled=True, min_replicas=2, max_replicas=5, metric="queueTime", target=0.05,
                           target_text="50ms")
    rec = recommend(spec, 2, [Sample(0, (0.084, 0.084))], 0, Memory())
    assert rec.desired == 4 and "queueTime 84 ms > 50ms target" in rec.reason and "2 -> 4" in rec.reason
    assert recommend(spec, 4, [Sample(0, (1.0,) * 4)], 0, Memory()).desired == 5  # max bound
