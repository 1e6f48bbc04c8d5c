"""Judge a canary on its own Triton metrics over one interval, against the stable revision (pure).

Inputs are cumulative counters summed over a revision's pods (nv_inference_request_success,
nv_inference_request_failure, nv_inference_request_duration_us): the difference of two samples
is the interval's traffic. Too little traffic gives no verdict: silence never promotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Verdict:
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Counters:
    """Cumulative request counters of one revision (sum over its pods)."""

    success: float = 0.0
    failure: float = 0.0
    duration_us: float = 0.0  # total request duration, microseconds

    def minus(self, earlier: Counters) -> Counters:
        """The interval between two samples; a counter that went down (a pod restarted) counts from 0."""
        def delta(now: float, before: float) -> float:
            return now - before if now >= before else now

        return Counters(delta(self.success, earlier.success), delta(self.failure, earlier.failure),
                        delta(self.duration_us, earlier.duration_us))

    @property
    def requests(self) -> float:
        return self.success + self.failure

    @property
    def error_rate(self) -> float:
        return self.failure / self.requests if self.requests else 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.duration_us / self.requests / 1e6 if self.requests else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"success": self.success, "failure": self.failure, "durationUs": self.duration_us}

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Counters:
        d = d or {}
        return Counters(float(d.get("success", 0)), float(d.get("failure", 0)), float(d.get("durationUs", 0)))


@dataclass(frozen=True)
class Thresholds:
    min_requests: int
    max_error_rate: float
    max_latency_ratio: float
    max_latency_s: float | None = None


@dataclass(frozen=True)
class Analysis:
    verdict: str
    requests: float
    error_rate: float
    latency_ratio: float | None
    reason: str

    def to_dict(self, at: str) -> dict[str, Any]:
        out: dict[str, Any] = {"at": at, "verdict": self.verdict, "requests": int(self.requests),
                               "errorRate": round(self.error_rate, 6), "reason": self.reason}
        if self.latency_ratio is not None:  # no null in status: the API server would drop it
            out["latencyRatio"] = round(self.latency_ratio, 4)
        return out


def judge(canary: Counters, stable: Counters, t: Thresholds) -> Analysis:
    """One interval's verdict. Errors are judged first: a failing model is caught even while slow.

    Latency is compared as mean request duration (Triton exports summed durations; a histogram
    source can pass p99 instead through the same fields); the stable revision is the yardstick,
    and an absolute limit applies when set.
    """
    n = canary.requests
    rate = canary.error_rate
    ratio = canary.mean_latency_s / stable.mean_latency_s if stable.requests and stable.mean_latency_s else None
    if n < t.min_requests:
        return Analysis(Verdict.INCONCLUSIVE, n, rate, ratio,
                        f"{int(n)} canary requests < minRequests {t.min_requests}")
    if rate > t.max_error_rate:
        return Analysis(Verdict.FAIL, n, rate, ratio,
                        f"error rate {rate:.2%} > {t.max_error_rate:.2%}")
    if ratio is not None and ratio > t.max_latency_ratio:
        return Analysis(Verdict.FAIL, n, rate, ratio,
                        f"latency {ratio:.2f}x the stable revision > {t.max_latency_ratio:.2f}x")
    if t.max_latency_s is not None and canary.mean_latency_s > t.max_latency_s:
        return Analysis(Verdict.FAIL, n, rate, ratio,
                        f"latency {canary.mean_latency_s * 1000:.1f} ms > {t.max_latency_s * 1000:.1f} ms")
    shown = "n/a" if ratio is None else f"{ratio:.2f}x"
    return Analysis(Verdict.PASS, n, rate, ratio, f"error rate {rate:.2%}, latency {shown} of stable")
