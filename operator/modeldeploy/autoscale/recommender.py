"""Desired replicas from per-pod Triton metrics (pure): stable and panic windows, no flapping.

The rule is the HPA's ratio (desired = ceil(current * value / target)) applied to two windows of
per-pod samples: the stable window (default 60 s) decides normally; the panic window (default
6 s) takes over when it asks for at least twice the current size, and while panicking the
autoscaler never scales down. Scale-up is limited per decision; scale-down waits
`scaleDownDelay` after the need first dropped and then removes at most half the pods at a time.
A pod whose scrape failed is missing data, never zero load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..api import AutoscalingSpec

TOLERANCE = 0.10  # within 10% of the target: no change (as the HPA)
PANIC_THRESHOLD = 2.0
MAX_SCALE_UP_FACTOR = 2.0
MIN_SCALE_UP_STEP = 4


@dataclass(frozen=True)
class Sample:
    """One tick's per-pod values of the chosen metric (None where the scrape failed)."""

    at: float
    values: tuple[float | None, ...]

    def mean(self) -> float | None:
        seen = [v for v in self.values if v is not None]
        return sum(seen) / len(seen) if seen else None


@dataclass(frozen=True)
class Memory:
    """What must survive between decisions (kept in status.autoscaling)."""

    panic_until: float | None = None
    below_since: float | None = None  # when the stable window first asked for fewer pods
    last_scale_at: float | None = None


@dataclass(frozen=True)
class Recommendation:
    desired: int
    metric_value: float | None
    mode: str  # stable | panic | hold
    reason: str
    memory: Memory
    limited_by_capacity: bool = False


def _window(samples: Sequence[Sample], now: float, window: float, target: float) -> tuple[float, float] | None:
    """(pods needed, mean per-pod value) over the window.

    Each sample is turned into the pods it needed (pods reporting x value / target) before
    averaging, so samples taken before a scale change are not re-applied to the new size (which
    would overshoot): for rates and queue lengths that is the total load over the target.
    """
    needs, values = [], []
    for s in samples:
        if now - s.at > window:
            continue
        seen = [v for v in s.values if v is not None]
        if not seen:
            continue
        mean = sum(seen) / len(seen)
        needs.append(len(s.values) * mean / target)
        values.append(mean)
    if not needs:
        return None
    return sum(needs) / len(needs), sum(values) / len(values)


def _desired(current: int, needed: float) -> int:
    if current > 0 and abs(needed / current - 1.0) <= TOLERANCE:
        return current
    return max(1, math.ceil(needed - 1e-9))


def _fmt(spec: AutoscalingSpec, value: float) -> str:
    if spec.metric == "queueTime":
        return f"queueTime {value * 1000:.0f} ms"
    if spec.metric == "gpuUtilization":
        return f"gpuUtilization {value:.0f}%"
    return f"{spec.metric} {value:.2f}"


def recommend(spec: AutoscalingSpec, current: int, samples: Sequence[Sample], now: float, memory: Memory,
              pending_unschedulable: int = 0) -> Recommendation:
    """Replicas the model should have now, with the reason in words for the event."""
    current = max(current, 0)
    stable = _window(samples, now, spec.stable_window, spec.target)
    panic = _window(samples, now, spec.panic_window, spec.target)
    target_text = spec.target_text

    def clamp(n: int) -> int:
        return max(spec.min_replicas, min(spec.max_replicas, n))

    if stable is None or current == 0:
        return Recommendation(clamp(current), None, "hold", "no metrics yet: holding", memory)

    stable_desired, stable_value = _desired(current, stable[0]), stable[1]
    panic_desired, panic_value = (_desired(current, panic[0]), panic[1]) if panic else (current, None)
    panicking = memory.panic_until is not None and now < memory.panic_until
    if panic_desired >= PANIC_THRESHOLD * current:
        panicking = True
        memory = Memory(now + spec.stable_window, memory.below_since, memory.last_scale_at)

    if panicking:
        desired = max(current, panic_desired, stable_desired)
        value, mode = (panic_value if panic_value is not None else stable_value), "panic"
    else:
        desired, value, mode = stable_desired, stable_value, "stable"

    if desired > current:
        limit = max(math.ceil(current * MAX_SCALE_UP_FACTOR), current + MIN_SCALE_UP_STEP)
        desired = min(desired, limit)
        limited = False
        if pending_unschedulable > 0:
            # Pods already wait for GPUs: asking for more only queues more pods.
            desired, limited = current, True
        memory = Memory(memory.panic_until, None, memory.last_scale_at)
        final = clamp(desired)
        if limited:
            return Recommendation(final, value, mode, f"{_fmt(spec, value)} > {target_text} target but "
                                  f"{pending_unschedulable} pod(s) wait for GPUs: holding at {current}", memory,
                                  limited_by_capacity=True)
        reason = f"{_fmt(spec, value)} > {target_text} target ({mode} window): {current} -> {final}"
        if final != current:
            memory = Memory(memory.panic_until, None, now)
        return Recommendation(final, value, mode, reason, memory)

    if desired < current and not panicking:
        below_since = memory.below_since if memory.below_since is not None else now
        memory = Memory(memory.panic_until, below_since, memory.last_scale_at)
        if now - below_since < spec.scale_down_delay:
            wait = spec.scale_down_delay - (now - below_since)
            return Recommendation(clamp(current), value, mode, f"{_fmt(spec, value)} < {target_text} target: "
                                  f"scale-down in {wait:.0f}s if it lasts", memory)
        final = clamp(max(desired, current // 2))
        reason = f"{_fmt(spec, value)} < {target_text} target for {spec.scale_down_delay:.0f}s: {current} -> {final}"
        if final != current:
            memory = Memory(memory.panic_until, now, now)  # the next step waits a full delay again
        return Recommendation(final, value, mode, reason, memory)

    memory = Memory(memory.panic_until, None, memory.last_scale_at)
    return Recommendation(clamp(current), value, mode, f"{_fmt(spec, value)} within 10% of {target_text}", memory)
