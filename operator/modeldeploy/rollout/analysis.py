"""Judge a canary on its own Triton metrics over one interval, against the stable revision (pure).

Inputs are cumulative counters summed over a revision's pods (nv_inference_request_success,
nv_inference_request_failure, nv_inference_request_duration_us): the difference of two samples
is the interval's traffic. Too little traffic gives no verdict: silence never promotes, and a
canary without a single request is never judged, whatever minRequests says.

Latency is judged on the p99 of Triton's own request latency summary
(nv_inference_request_summary_us{quantile="0.99"}, enabled by resources/deployment.py
triton_args). Triton computes it over a sliding window of the last 48-60 s (prometheus-cpp's
Summary: 60 s in 5 age buckets of 12 s), not over the analysis interval: the p99 of a window is
the one of its later sample. Only when Triton gives no p99 (summaries off in an older image, no
successful request in its window) is the mean request duration judged instead, and the analysis
reason says so.
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


def revision_p99(per_pod: Mapping[str, float | None]) -> float | None:
    """A revision's p99 from its pods' p99s: the highest (None when no pod has one).

    Quantiles of different pods cannot be combined exactly; the highest is the one choice that
    never understates the revision: every pod has at most 1% of its requests above its own p99,
    hence above the highest, so at most 1% of all the revision's requests are (an upper bound of
    the revision's true p99). One slow canary pod (a throttled node, a bad GPU) is judged as slow
    instead of being diluted by its healthy siblings, which a request-weighted mean would do,
    with weights from the wrong window besides (the interval's counters, not Triton's 48-60 s
    summary window). The price: with many stable pods and little traffic each, the stable
    revision's highest p99 is a little above its true p99, which makes the ratio a little
    kinder to a canary of fewer pods. Pods without a p99 (no request in Triton's window, or no
    summary exported) are left out.
    """
    values = [v for v in per_pod.values() if v is not None]
    return max(values) if values else None


@dataclass(frozen=True)
class Counters:
    """Cumulative request counters of one revision: the sum over its pods, and each pod's own.

    The per-pod values let the next window subtract pod by pod: when a pod leaves the revision
    (scaled down mid-step) its requests leave with it, instead of the sum dropping and looking
    like a reset of every pod (which counted the remaining pods' whole lifetime as one window).

    `p99_us` is not a counter: the revision's p99 request latency when sampled (see
    `revision_p99`), None when Triton exported none. A window's p99 is its later sample's.
    """

    success: float = 0.0
    failure: float = 0.0
    duration_us: float = 0.0  # total duration of the successful requests, microseconds
    pods: tuple[PodCounts, ...] = ()  # sorted by name; empty for sums read from an older status
    p99_us: float | None = None  # p99 request duration, microseconds, over Triton's 48-60 s window

    @staticmethod
    def of_pods(per_pod: Mapping[str, tuple[float, float, float]],
                p99_us: Mapping[str, float | None] | None = None) -> Counters:
        """The revision's counters from each pod's (success, failure, duration_us), and its p99
        from each pod's p99 (`revision_p99`; only pods in `per_pod` count)."""
        pods = tuple(sorted((name, *values) for name, values in per_pod.items()))
        p99 = revision_p99({name: v for name, v in (p99_us or {}).items() if name in per_pod})
        return Counters(sum(p[1] for p in pods), sum(p[2] for p in pods), sum(p[3] for p in pods), pods, p99)

    def minus(self, earlier: Counters) -> Counters:
        """The traffic between two samples: pod by pod when both know their pods (a new pod counts
        from 0, a pod gone is left out), else from the sums. The p99 is this (the later) sample's."""
        if self.pods and (earlier.pods or earlier.requests == 0):
            before = {name: (s, f, d) for name, s, f, d in earlier.pods}
            windows = [(_delta(s, b[0]), _delta(f, b[1]), _delta(d, b[2]))
                       for name, s, f, d in self.pods for b in [before.get(name, (0.0, 0.0, 0.0))]]
            return Counters(sum(w[0] for w in windows), sum(w[1] for w in windows), sum(w[2] for w in windows),
                            p99_us=self.p99_us)
        return Counters(_delta(self.success, earlier.success), _delta(self.failure, earlier.failure),
                        _delta(self.duration_us, earlier.duration_us), p99_us=self.p99_us)

    @property
    def requests(self) -> float:
        return self.success + self.failure

    @property
    def error_rate(self) -> float:
        return self.failure / self.requests if self.requests else 0.0

    @property
    def mean_latency_s(self) -> float:
        """Mean duration of the successful requests: Triton adds only those to
        nv_inference_request_duration_us (a failed request's time is counted nowhere)."""
        return self.duration_us / self.success / 1e6 if self.success else 0.0

    @property
    def p99_s(self) -> float | None:
        return None if self.p99_us is None else self.p99_us / 1e6

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"success": self.success, "failure": self.failure, "durationUs": self.duration_us}
        if self.p99_us is not None:  # no null in status: the API server would drop it
            d["p99Us"] = self.p99_us
        if self.pods:
            d["pods"] = {name: {"success": s, "failure": f, "durationUs": du} for name, s, f, du in self.pods}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Counters:
        d = d or {}
        pods = d.get("pods") or {}
        p99 = d.get("p99Us")
        return Counters(float(d.get("success", 0)), float(d.get("failure", 0)), float(d.get("durationUs", 0)),
                        tuple(sorted((str(name), float(v.get("success", 0)), float(v.get("failure", 0)),
                                      float(v.get("durationUs", 0))) for name, v in pods.items())),
                        None if p99 is None else float(p99))


@dataclass(frozen=True)
class Thresholds:
    min_requests: int
    max_error_rate: float
    max_latency_ratio: float  # canary p99 / stable p99 (means without p99s)
    max_latency_s: float | None = None  # ceiling on the canary's p99 (its mean without a p99)


@dataclass(frozen=True)
class Analysis:
    """One verdict with its numbers. Exactly one of `p99_ratio` (judged on p99s) and
    `latency_ratio` (judged on means, no p99 from Triton) is set when a ratio was computed."""

    verdict: str
    requests: float
    error_rate: float
    latency_ratio: float | None  # canary / stable mean latency, when judged on means
    reason: str
    p99_ratio: float | None = None  # canary / stable p99, when judged on p99s
    p99_s: float | None = None  # the canary's p99, seconds, when Triton exported one

    def to_dict(self, at: str) -> dict[str, Any]:
        out: dict[str, Any] = {"at": at, "verdict": self.verdict, "requests": int(self.requests),
                               "errorRate": round(self.error_rate, 6), "reason": self.reason}
        # no null in status: the API server would drop it
        if self.latency_ratio is not None:
            out["latencyRatio"] = round(self.latency_ratio, 4)
        if self.p99_ratio is not None:
            out["p99Ratio"] = round(self.p99_ratio, 4)
        if self.p99_s is not None:
            out["p99Seconds"] = round(self.p99_s, 6)
        return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def judge(canary: Counters, stable: Counters, t: Thresholds) -> Analysis:
    """One interval's verdict. Errors are judged first: a failing model is caught even while slow.

    1. no canary request at all: Inconclusive, whatever `min_requests` (even 0) says;
    2. fewer than `min_requests` canary requests: Inconclusive;
    3. canary error rate > `max_error_rate`: Fail;
    4. canary p99 / stable p99 > `max_latency_ratio`: Fail (when both revisions have a p99; else
       canary mean / stable mean, reason "mean latency ... (no p99 from Triton)"; no ratio when
       the stable revision has neither, i.e. served nothing to compare with);
    5. canary p99 > `max_latency_s` when set: Fail (the canary's mean when it has no p99);
    6. otherwise Pass.
    """
    n, rate = canary.requests, canary.error_rate
    can_p99, stable_p99 = canary.p99_s, stable.p99_s
    p99_ratio = can_p99 / stable_p99 if can_p99 is not None and stable_p99 else None
    mean_ratio = (canary.mean_latency_s / stable.mean_latency_s  # only without p99s
                  if p99_ratio is None and canary.success and stable.mean_latency_s else None)

    def result(verdict: str, reason: str) -> Analysis:
        return Analysis(verdict, n, rate, mean_ratio, reason, p99_ratio, can_p99)

    if n <= 0:
        return result(Verdict.INCONCLUSIVE, "no canary requests: no verdict without traffic")
    if n < t.min_requests:
        return result(Verdict.INCONCLUSIVE, f"{int(n)} canary requests < minRequests {t.min_requests}")
    if rate > t.max_error_rate:
        return result(Verdict.FAIL, f"error rate {rate:.2%} > {t.max_error_rate:.2%}")
    if p99_ratio is not None and p99_ratio > t.max_latency_ratio:
        return result(Verdict.FAIL, f"p99 latency {p99_ratio:.2f}x the stable revision's > {t.max_latency_ratio:.2f}x"
                                    f" ({_ms(can_p99 or 0.0)} vs {_ms(stable_p99 or 0.0)})")
    if mean_ratio is not None and mean_ratio > t.max_latency_ratio:
        return result(Verdict.FAIL, f"mean latency {mean_ratio:.2f}x the stable revision's > "
                                    f"{t.max_latency_ratio:.2f}x (no p99 from Triton)")
    if t.max_latency_s is not None:
        if can_p99 is not None and can_p99 > t.max_latency_s:
            return result(Verdict.FAIL, f"p99 latency {_ms(can_p99)} > {_ms(t.max_latency_s)}")
        if can_p99 is None and canary.success and canary.mean_latency_s > t.max_latency_s:
            return result(Verdict.FAIL, f"mean latency {_ms(canary.mean_latency_s)} > {_ms(t.max_latency_s)} "
                                        "(no p99 from Triton)")
    if p99_ratio is not None:
        shown = f"p99 latency {p99_ratio:.2f}x of stable ({_ms(can_p99 or 0.0)})"
    elif mean_ratio is not None:
        shown = f"mean latency {mean_ratio:.2f}x of stable (no p99 from Triton)"
    elif can_p99 is not None:
        shown = f"p99 latency {_ms(can_p99)}, no stable p99 to compare"
    else:
        shown = "latency n/a of stable"
    return result(Verdict.PASS, f"error rate {rate:.2%}, {shown}")
