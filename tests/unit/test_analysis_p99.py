"""Canary latency judged on Triton's p99 (its request latency summary), means only as a fallback (pure).

The CRD says maxLatencyRatio is "canary p99 / stable p99" and maxP99Latency a ceiling on the
canary's p99: these cases pin that down, with the fallback to means (said in the reason) when a
revision has no p99, and a canary without a single request never passing (minRequests 0 too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.metrics.parse import TritonMetrics
from modeldeploy.reconciler import revision_counters
from modeldeploy.rollout.analysis import Analysis, Counters, Thresholds, Verdict, judge, revision_p99

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "modeldeploy.io_modeldeployments.yaml"
MS = 1000.0  # microseconds


def rev(requests: int, mean_ms: float, p99_ms: float | None, failed: int = 0) -> Counters:
    """One revision's window: `requests` (of which `failed`), the successful ones averaging `mean_ms`."""
    ok = requests - failed
    return Counters(ok, failed, ok * mean_ms * MS, p99_us=None if p99_ms is None else p99_ms * MS)


T = Thresholds(50, 0.01, 1.25, None)  # positional, as rollout/canary.py builds it
T_CEIL = Thresholds(50, 0.01, 1.25, 0.05)  # maxP99Latency: 50ms
T_ZERO = Thresholds(0, 0.01, 1.25, None)  # minRequests: 0

# name, canary, stable, thresholds, verdict, reason starts with, judged on ("p99", "mean", None)
CASES: list[tuple[str, Counters, Counters, Thresholds, str, str, str | None]] = [
    ("no canary traffic, minRequests 0", Counters(), rev(500, 10, 12), T_ZERO,
     Verdict.INCONCLUSIVE, "no canary requests", None),
    ("no canary traffic, default minRequests", Counters(), rev(500, 10, 12), T,
     Verdict.INCONCLUSIVE, "no canary requests", None),
    ("no canary traffic but a p99 from before the window", Counters(p99_us=11 * MS), rev(500, 10, 12), T_ZERO,
     Verdict.INCONCLUSIVE, "no canary requests", "p99"),
    ("too few canary requests", rev(10, 10, 12), rev(500, 10, 12), T,
     Verdict.INCONCLUSIVE, "10 canary requests < minRequests 50", "p99"),
    ("minRequests 0, one good request", rev(1, 10, 10), rev(500, 10, 12), T_ZERO,
     Verdict.PASS, "error rate 0.00%, p99 latency 0.83x of stable (10.0 ms)", "p99"),
    ("errors first, even while slow", rev(100, 50, 500, failed=10), rev(500, 10, 12), T,
     Verdict.FAIL, "error rate 10.00% > 1.00%", "p99"),
    ("same means, slow tail: p99 fails", rev(100, 10, 60), rev(500, 10, 12), T,
     Verdict.FAIL, "p99 latency 5.00x the stable revision's > 1.25x (60.0 ms vs 12.0 ms)", "p99"),
    ("slower mean, same tail: p99 passes", rev(100, 20, 12), rev(500, 10, 12), T,
     Verdict.PASS, "error rate 0.00%, p99 latency 1.00x of stable (12.0 ms)", "p99"),
    ("p99 ratio exactly at the limit passes", rev(100, 10, 15), rev(500, 10, 12), T,
     Verdict.PASS, "error rate 0.00%, p99 latency 1.25x", "p99"),
    ("p99 ceiling", rev(100, 10, 60), rev(500, 10, 55), T_CEIL,
     Verdict.FAIL, "p99 latency 60.0 ms > 50.0 ms", "p99"),
    ("mean above the ceiling, p99 below: passes", rev(100, 70, 45), rev(500, 70, 45), T_CEIL,
     Verdict.PASS, "error rate 0.00%, p99 latency 1.00x of stable (45.0 ms)", "p99"),
    ("no p99 at all: means, said so", rev(100, 20, None), rev(500, 10, None), T,
     Verdict.FAIL, "mean latency 2.00x the stable revision's > 1.25x (no p99 from Triton)", "mean"),
    ("no p99 at all, means fine", rev(100, 11, None), rev(500, 10, None), T,
     Verdict.PASS, "error rate 0.00%, mean latency 1.10x of stable (no p99 from Triton)", "mean"),
    ("canary without p99: means", rev(100, 20, None), rev(500, 10, 12), T,
     Verdict.FAIL, "mean latency 2.00x the stable revision's > 1.25x (no p99 from Triton)", "mean"),
    ("stable without p99 (older image): means for the ratio", rev(100, 11, 60), rev(500, 10, None), T,
     Verdict.PASS, "error rate 0.00%, mean latency 1.10x of stable (no p99 from Triton)", "mean"),
    ("stable without p99: the canary's own p99 still meets the ceiling", rev(100, 11, 60), rev(500, 10, None),
     T_CEIL, Verdict.FAIL, "p99 latency 60.0 ms > 50.0 ms", "mean"),
    ("no p99, mean above the ceiling", rev(100, 60, None), rev(500, 55, None), T_CEIL,
     Verdict.FAIL, "mean latency 60.0 ms > 50.0 ms (no p99 from Triton)", "mean"),
    ("nothing to compare with", rev(100, 10, None), Counters(), T,
     Verdict.PASS, "error rate 0.00%, latency n/a of stable", None),
    ("no stable yardstick, canary p99 shown", rev(100, 10, 12), Counters(), T,
     Verdict.PASS, "error rate 0.00%, p99 latency 12.0 ms, no stable p99 to compare", None),
]


@pytest.mark.parametrize(("canary", "stable", "t", "verdict", "reason", "basis"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_table(canary: Counters, stable: Counters, t: Thresholds, verdict: str, reason: str,
                     basis: str | None) -> None:
    a = judge(canary, stable, t)
    assert (a.verdict, a.reason[:len(reason)]) == (verdict, reason), a
    status = a.to_dict("2026-01-01T00:00:00Z")
    # status: p99Ratio when judged on p99s, latencyRatio when on means, never both
    assert ("p99Ratio" in status, "latencyRatio" in status) == (basis == "p99", basis == "mean"), status
    assert ("p99Seconds" in status) == (canary.p99_us is not None)
    if basis == "p99":
        assert status["p99Ratio"] == pytest.approx(canary.p99_us / stable.p99_us, abs=1e-4)  # type: ignore[operator]
        assert "mean" not in a.reason


def test_zero_canary_requests_never_pass_whatever_the_thresholds() -> None:
    for t in (T_ZERO, Thresholds(0, 1.0, 100.0, None), Thresholds(0, 0.0, 1.0, 10.0)):
        for stable in (Counters(), rev(500, 10, 12), rev(500, 10, None)):
            for canary in (Counters(), Counters(p99_us=1.0), Counters(0, 0, 5e6)):
                assert judge(canary, stable, t).verdict == Verdict.INCONCLUSIVE


def test_the_constructor_and_analysis_stay_compatible_with_callers() -> None:
    """rollout/canary.py builds Thresholds positionally and a 'metrics could not be read' Analysis
    with five positional fields; keyword max_latency_s keeps working."""
    assert Thresholds(10, 0.01, 1.25, 0.2) == Thresholds(min_requests=10, max_error_rate=0.01,
                                                       max_latency_ratio=1.25, max_latency_s=0.2)
    missing = Analysis(Verdict.FAIL, 0, 0.0, None, "metrics could not be read")
    assert missing.to_dict("t") == {"at": "t", "verdict": "Fail", "requests": 0, "errorRate": 0.0,
                                    "reason": "metrics could not be read"}


@pytest.mark.parametrize(("per_pod", "expected"), [
    ({}, None),
    ({"a": None, "b": None}, None),
    ({"a": 12_000.0}, 12_000.0),
    ({"a": 12_000.0, "b": None, "c": 90_000.0}, 90_000.0),  # one slow pod is the revision's p99
])
def test_a_revisions_p99_is_its_slowest_pods(per_pod: dict[str, float | None], expected: float | None) -> None:
    assert revision_p99(per_pod) == expected


def test_counters_of_pods_take_the_highest_p99_of_the_pods_counted() -> None:
    c = Counters.of_pods({"a": (10, 0, 1e5), "b": (20, 1, 2e5)}, {"a": 9_000.0, "b": 14_000.0, "gone": 1e9})
    assert (c.success, c.failure, c.duration_us, c.p99_us) == (30, 1, 3e5, 14_000.0)
    assert Counters.of_pods({"a": (10, 0, 1e5)}).p99_us is None  # no p99s given: as before
    assert Counters.of_pods({"a": (10, 0, 1e5)}, {"a": None}).p99_us is None


def test_a_windows_p99_is_the_later_samples() -> None:
    before = Counters.of_pods({"a": (100, 0, 1e6)}, {"a": 50_000.0})
    after = Counters.of_pods({"a": (150, 0, 1.5e6), "b": (5, 0, 5e4)}, {"a": 12_000.0, "b": 13_000.0})
    assert after.minus(before) == Counters(55, 0, 5.5e5, p99_us=13_000.0)  # pod by pod
    sums = Counters(150, 0, 1.5e6, p99_us=12_000.0)
    assert sums.minus(Counters(100, 0, 1e6, p99_us=50_000.0)) == Counters(50, 0, 5e5, p99_us=12_000.0)  # sums
    assert Counters.of_pods({"a": (150, 0, 1.5e6)}).minus(before).p99_us is None  # no p99 now: none


def test_status_round_trip_keeps_the_p99_and_reads_older_status() -> None:
    with_p99 = Counters.of_pods({"a": (5, 0, 50), "b": (7, 1, 80)}, {"a": 10.0, "b": 30.0})
    assert with_p99.to_dict()["p99Us"] == 30.0
    assert Counters.from_dict(with_p99.to_dict()) == with_p99
    without = Counters.of_pods({"a": (5, 0, 50)})
    assert "p99Us" not in without.to_dict() and Counters.from_dict(without.to_dict()) == without
    older = Counters.from_dict({"success": 12, "failure": 1, "durationUs": 130})  # an older operator's status
    assert older.p99_us is None and older == Counters(12, 1, 130)


def test_every_status_key_written_is_in_the_crd_schema() -> None:
    """The API server prunes unknown status fields: what to_dict writes must be in the schema."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    canary = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["canary"]["properties"]
    analysis = canary["analyses"]["items"]["properties"]
    written: set[str] = {"step"}
    for canary_counters, stable_counters, t, *_ in (c[1:] for c in CASES):
        written |= judge(canary_counters, stable_counters, t).to_dict("t").keys()
    assert {"p99Ratio", "latencyRatio", "p99Seconds"} <= written
    assert written <= analysis.keys(), written - analysis.keys()
    sample = Counters.of_pods({"a": (5, 0, 50)}, {"a": 10.0}).to_dict()
    for side in ("canary", "stable"):
        schema = canary["lastSample"]["properties"][side]["properties"]
        assert sample.keys() <= schema.keys(), sample.keys() - schema.keys()
        assert schema["p99Us"]["type"] == "number"


class _Source:
    def __init__(self, table: dict[str, TritonMetrics | None]) -> None:
        self.table = table

    def pods(self, namespace: str, pods: dict[str, str], model: str) -> dict[str, TritonMetrics | None]:
        return {name: self.table.get(name) for name in pods}


def _pod(name: str, rev_: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"modeldeploy.io/revision": rev_}},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def test_revision_counters_carry_the_slowest_pods_p99() -> None:
    pods = [_pod("a1", "a"), _pod("a2", "a"), _pod("b1", "b")]
    table = {"a1": TritonMetrics(success=10, request_duration_us=500, request_p99_us=80.0),
             "a2": TritonMetrics(success=10, request_duration_us=500, request_p99_us=None),  # idle in the window
             "b1": TritonMetrics(success=3, request_duration_us=30)}  # an image without summaries
    got = revision_counters(_Source(table), pods, "a", "m", "ns")  # type: ignore[arg-type]
    assert got == Counters(20, 0, 1000, (("a1", 10, 0, 500), ("a2", 10, 0, 500)), p99_us=80.0)
    older = revision_counters(_Source(table), pods, "b", "m", "ns")  # type: ignore[arg-type]
    assert older is not None and older.p99_us is None and older.success == 3
