"""Scale to zero and back (pure): when an idle model goes to 0 pods, when demand brings it back to 1,
and whether its Service points at the pods or at the activator.

The recommender (recommender.py) never goes below one pod; going to zero is decided here, from
facts the caller gathers:

- `last_request_at`: the last time any pod's Triton counted a request (the autoscaler sees the
  counter move); None when unknown (no sample yet, a scrape failed): unknown is never idle;
- `last_demand_at`: the newest demand the activator wrote (its demand Lease);
- `up_since`: when the model last came up from zero (or its pods were first Ready): a model that
  just woke is not idle before a full window, even if its first request has not reached Triton yet;
- `zero_since`: when it went to zero (status), so only demand newer than that wakes it.

A model never goes to zero while a canary or a build runs (both need the running revision), and
never while its pods hold requests (Triton's pending count). Zero to one is at once, on any demand
newer than going to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..api import AutoscalingSpec, format_duration

# Where the model's Service sends traffic.
TARGET_PODS: Final = "pods"
TARGET_ACTIVATOR: Final = "activator"

REASON_SCALED_TO_ZERO: Final = "ScaledToZero"  # condition reason while at zero (planning/status.py)
REASON_ACTIVATING: Final = "Activating"  # demand seen, first pod not Ready yet


@dataclass(frozen=True)
class ZeroFacts:
    now: float
    replicas: int  # pods the model is asked to run now (0: at zero)
    ready: int  # Ready pods
    last_request_at: float | None = None
    last_demand_at: float | None = None
    up_since: float | None = None
    zero_since: float | None = None
    pending_requests: int = 0  # requests inside Triton now (all pods)
    canary: bool = False
    building: bool = False


@dataclass(frozen=True)
class ZeroDecision:
    """`replicas`: 0 or 1 when this module decides; None leaves it to the recommender."""

    replicas: int | None
    reason: str
    recheck_in: float | None = None  # seconds until the decision may change without new facts


def decide(spec: AutoscalingSpec, f: ZeroFacts) -> ZeroDecision:
    """Whether the model goes to zero, stays there, or comes back to one pod."""
    if not spec.scales_to_zero:
        return ZeroDecision(None, "scale to zero is off (autoscaling.minReplicas > 0 or autoscaling disabled)")
    assert spec.scale_to_zero_after is not None
    after = spec.scale_to_zero_after
    if f.replicas <= 0:
        if f.last_demand_at is not None and (f.zero_since is None or f.last_demand_at > f.zero_since):
            return ZeroDecision(1, "requests are waiting in the activator: 0 -> 1")
        return ZeroDecision(0, "at zero: no requests since it went idle")
    if f.canary:
        return ZeroDecision(None, "a canary is running: never to zero during a rollout")
    if f.building:
        return ZeroDecision(None, "a revision is building: never to zero during a build")
    if f.pending_requests > 0:
        return ZeroDecision(None, f"{f.pending_requests} request(s) in progress", after)
    if f.last_request_at is None:
        return ZeroDecision(None, "request counts unknown: not idle", after)
    busy_at = max(t for t in (f.last_request_at, f.last_demand_at, f.up_since) if t is not None)
    idle = f.now - busy_at
    if idle >= after:
        return ZeroDecision(0, f"no requests for {format_duration(round(idle))} (scaleToZeroAfter "
                            f"{format_duration(after)}): {f.replicas} -> 0")
    return ZeroDecision(None, f"idle for {format_duration(max(0, round(idle)))} of {format_duration(after)}",
                        after - idle)


def holds_at_zero(spec: AutoscalingSpec, spec_replicas: int, routed: bool) -> bool:
    """Whether the activator stands in for this model while it has no Ready pod.

    Models that scale to zero themselves (autoscaling.minReplicas 0), and models whose replicas
    are owned outside the operator (autoscaling disabled) once `spec.replicas` has been 0: kubectl
    scale, an HPA or KEDA took them there through the scale subresource. `routed` says the
    activator already has the model's route (it went to zero before): it keeps it, so when the
    external scaler raises `spec.replicas` again, the requests held meanwhile are forwarded to the
    first Ready pod and none is refused while it starts. A model the operator autoscales with a
    floor of one pod never needs it."""
    if spec.scales_to_zero:
        return True
    if spec.enabled:
        return False
    return spec_replicas <= 0 or routed


def service_target(holds: bool, replicas: int, ready: int, activator_ready: int) -> str:
    """Where the model's Service points: its pods, or the activator while it has no Ready pod.

    The activator is only used for models it `holds` (holds_at_zero), and only while it has a Ready
    replica (otherwise the Service keeps pointing at the pods: no worse than before). It takes the
    traffic before the last pod goes (replicas 0 with pods still Ready), so no request reaches a
    pod being removed, and gives it back as soon as one pod is Ready (the activator forwards its
    held requests through the always-selecting `<name>-stable` Service meanwhile).
    """
    if not holds or activator_ready <= 0:
        return TARGET_PODS
    if replicas <= 0 or ready <= 0:
        return TARGET_ACTIVATOR
    return TARGET_PODS


def last_request_at(previous: float | None, now: float, before: dict[str, float] | None, before_at: float,
                    after: dict[str, float | None]) -> float | None:
    """When the model last served a request (at the latest), from two reads of each Ready pod's
    request counter (Triton's success + failure, by pod name; None where the scrape failed), the
    first taken at `before_at`.

    Any counter that moved (or went down: the pod restarted and counted again, or a pod new since
    the last read already counted one) means a request in between: `now`. No counter moved: the
    previous answer stands, or, with none yet, `before_at` (no request since then; one just before
    it is possible, so the idle window counts from there: never too early). A failed scrape, or no
    earlier read to compare with, is unknown: None, which decide() never takes for idleness.
    """
    if any(v is None for v in after.values()) or before is None:
        return None
    for pod, count in after.items():
        assert count is not None
        was = before.get(pod)
        if (was is None and count > 0) or (was is not None and count != was):
            return now
    return previous if previous is not None else before_at
