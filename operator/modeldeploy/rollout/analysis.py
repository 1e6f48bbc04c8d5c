"""Judge a canary on its own Triton metrics over one interval, against the stable revision (pure).

Inputs are cumulative counters summed over a revision's pods (nv_inference_request_success,
nv_inference_request_failure, nv_inference_request_duration_us): the difference of two samples
is the interval's traffic. Too little traffic gives no verdict: silence never promotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Verdict:
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


PodCounts = tuple[str, float, float, float]  # pod name, success, failure, duration_us


def _delta(now: float, before: float) -> float:
    """A counter that went down was reset (the pod's Triton restarted): it counts from 0."""
    return now - before if now >= before else now


@dataclass(frozen=True)
class Counters:
    """Cumulative request counters of one revision: the sum over its pods, and each pod's own.

    The per-pod values let the next window subtract pod by pod: when a pod leaves the revision
    (scaled down mid-step) its requests leave with it, instead of the sum dropping and looking
    like a reset of every pod (which counted the remaining pods' whole lifetime as one window).
    """

    success: float = 0.0
    failure: float = 0.0
    duration_us: float = 0.0  # total request duration, microseconds
    pods: tuple[PodCounts, ...] = ()  # sorted by name; empty for sums read from an older status

    @staticmethod
    def of_pods(per_pod: Mapping[str, tuple[float, float, float]]) -> Counters:
        pods = tuple(sorted((name, *values) for name, values in per_pod.items()))
        return Counters(sum(p[1] for p in pods), sum(p[2] for p in pods), sum(p[3] for p in pods), pods)

    def minus(self, earlier: Counters) -> Counters:
        """The traffic between two samples: pod by pod when both know their pods (a new pod counts
        from 0, a pod gone is left out), else from the sums."""
        if self.pods and (earlier.pods or earlier.requests == 0):
            before = {name: (s, f, d) for name, s, f, d in earlier.pods}
            windows = [(_delta(s, b[0]), _delta(f, b[1]), _delta(d, b[2]))
                       for name, s, f, d in self.pods for b in [before.get(name, (0.0, 0.0, 0.0))]]
            return Counters(sum(w[0] for w in windows), sum(w[1] for w in windows), sum(w[2] for w in windows))
        return Counters(_delta(self.success, earlier.success), _delta(self.failure, earlier.failure),
                        _delta(self.duration_us, earlier.duration_us))

    @property
    def requests(self) -> float:
        return self.success + self.failure

    @property
    def error_rate(self) -> float:
        return self.failure / self.requests if self.requests else 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.duration_us / self.requests / 1e6 if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"success": self.success, "failure": self.failure, "durationUs": self.duration_us}
        if self.pods:
            d["pods"] = {name: {"success": s, "failure": f, "durationUs": du} for name, s, f, du in self.pods}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Counters:
        d = d or {}
        pods = d.get("pods") or {}
        return Counters(float(d.get("success", 0)), float(d.get("failure", 0)), float(d.get("durationUs", 0)),
                        tuple(sorted((str(name), float(v.get("success", 0)), float(v.get("failure", 0)),
                                      float(v.get("durationUs", 0))) for name, v in pods.items())))


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
