"""Per-pod metric values for the autoscaler from two scrapes of the same pod (pure)."""

from __future__ import annotations

from ..metrics.parse import TritonMetrics


def _delta(now: float, before: float) -> float:
    """A counter that went down was reset (the pod restarted): count from zero."""
    return now - before if now >= before else now


def pod_value(metric: str, now: TritonMetrics | None, before: TritonMetrics | None, seconds: float) -> float | None:
    """The per-pod value of `metric` over the last interval, or None when it cannot be known."""
    if now is None:
        return None
    if metric == "pendingRequests":
        return now.pending
    if metric == "gpuUtilization":
        return None if now.gpu_utilization is None else now.gpu_utilization * 100
    if before is None or seconds <= 0:
        return None
    requests = _delta(now.requests, before.requests)
    if metric == "inferenceRate":
        return requests / seconds
    if metric == "queueTime":
        if requests == 0:
            return 0.0  # an idle pod queues nothing
        return _delta(now.queue_duration_us, before.queue_duration_us) / requests / 1e6
    raise ValueError(f"unknown metric {metric!r}")
