"""Triton's p99 request latency from its summary, from /metrics text and from Prometheus answers (pure).

TEXT is what a real tritonserver 2.51 (the CPU build from nvidia-pytriton 0.7.0) exported with the
pods' generated arguments (`--metrics-config=summary_latencies=true`, `summary_quantiles=...`)
after 200 requests to each of three python models and 3 failing ones to `fast`, trimmed to the
families modeldeploy reads (and one other summary); `idle` had its 5 requests more than a minute
before, out of Triton's summary window (NaN, written "Nan").
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from modeldeploy.metrics import prometheus
from modeldeploy.metrics.parse import REQUEST_SUMMARY, TritonMetrics, is_p99, parse
from modeldeploy.metrics.prometheus import build_query, parse_response
from modeldeploy.rollout.analysis import Counters, Thresholds, Verdict, judge

TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="tail",version="1"} 200
nv_inference_request_success{model="idle",version="1"} 5
nv_inference_request_success{model="fast",version="1"} 200
nv_inference_request_success{model="steady",version="1"} 200
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="idle",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="fast",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="steady",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="tail",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="steady",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="steady",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="steady",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="fast",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="idle",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="fast",reason="BACKEND",version="1"} 3
nv_inference_request_failure{model="idle",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="tail",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="fast",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="tail",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="tail",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="idle",reason="REJECTED",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="tail",version="1"} 200
nv_inference_count{model="idle",version="1"} 5
nv_inference_count{model="fast",version="1"} 200
nv_inference_count{model="steady",version="1"} 200
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="tail",version="1"} 8890006
nv_inference_request_duration_us{model="idle",version="1"} 47232
nv_inference_request_duration_us{model="fast",version="1"} 74290
nv_inference_request_duration_us{model="steady",version="1"} 8248147
# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="tail",version="1"} 200
nv_inference_request_summary_us_sum{model="tail",version="1"} 8890006
nv_inference_request_summary_us{model="tail",version="1",quantile="0.5"} 40742
nv_inference_request_summary_us{model="tail",version="1",quantile="0.9"} 41812
nv_inference_request_summary_us{model="tail",version="1",quantile="0.95"} 43022
nv_inference_request_summary_us{model="tail",version="1",quantile="0.99"} 200652
nv_inference_request_summary_us_count{model="idle",version="1"} 5
nv_inference_request_summary_us_sum{model="idle",version="1"} 47232
nv_inference_request_summary_us{model="idle",version="1",quantile="0.5"} Nan
nv_inference_request_summary_us{model="idle",version="1",quantile="0.9"} Nan
nv_inference_request_summary_us{model="idle",version="1",quantile="0.95"} Nan
nv_inference_request_summary_us{model="idle",version="1",quantile="0.99"} Nan
nv_inference_request_summary_us_count{model="fast",version="1"} 200
nv_inference_request_summary_us_sum{model="fast",version="1"} 74290
nv_inference_request_summary_us{model="fast",version="1",quantile="0.5"} 134
nv_inference_request_summary_us{model="fast",version="1",quantile="0.9"} 252
nv_inference_request_summary_us{model="fast",version="1",quantile="0.95"} 311
nv_inference_request_summary_us{model="fast",version="1",quantile="0.99"} 1045
nv_inference_request_summary_us_count{model="steady",version="1"} 200
nv_inference_request_summary_us_sum{model="steady",version="1"} 8248147
nv_inference_request_summary_us{model="steady",version="1",quantile="0.5"} 40777
nv_inference_request_summary_us{model="steady",version="1",quantile="0.9"} 41664
nv_inference_request_summary_us{model="steady",version="1",quantile="0.95"} 42438
nv_inference_request_summary_us{model="steady",version="1",quantile="0.99"} 45006
# HELP nv_inference_queue_summary_us Summary of inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="tail",version="1"} 200
nv_inference_queue_summary_us_sum{model="tail",version="1"} 12643
nv_inference_queue_summary_us{model="tail",version="1",quantile="0.5"} 25
nv_inference_queue_summary_us{model="tail",version="1",quantile="0.9"} 68
nv_inference_queue_summary_us{model="tail",version="1",quantile="0.95"} 182
nv_inference_queue_summary_us{model="tail",version="1",quantile="0.99"} 525
nv_inference_queue_summary_us_count{model="idle",version="1"} 5
nv_inference_queue_summary_us_sum{model="idle",version="1"} 202
nv_inference_queue_summary_us{model="idle",version="1",quantile="0.5"} Nan
nv_inference_queue_summary_us{model="idle",version="1",quantile="0.9"} Nan
nv_inference_queue_summary_us{model="idle",version="1",quantile="0.95"} Nan
nv_inference_queue_summary_us{model="idle",version="1",quantile="0.99"} Nan
nv_inference_queue_summary_us_count{model="fast",version="1"} 200
nv_inference_queue_summary_us_sum{model="fast",version="1"} 4309
nv_inference_queue_summary_us{model="fast",version="1",quantile="0.5"} 9
nv_inference_queue_summary_us{model="fast",version="1",quantile="0.9"} 37
nv_inference_queue_summary_us{model="fast",version="1",quantile="0.95"} 51
nv_inference_queue_summary_us{model="fast",version="1",quantile="0.99"} 108
nv_inference_queue_summary_us_count{model="steady",version="1"} 200
nv_inference_queue_summary_us_sum{model="steady",version="1"} 17055
nv_inference_queue_summary_us{model="steady",version="1",quantile="0.5"} 28
nv_inference_queue_summary_us{model="steady",version="1",quantile="0.9"} 85
nv_inference_queue_summary_us{model="steady",version="1",quantile="0.95"} 233
nv_inference_queue_summary_us{model="steady",version="1",quantile="0.99"} 869
"""

NOW = 1_700_000_000.0


def test_the_p99_is_read_from_the_summary() -> None:
    tail, steady, fast = parse(TEXT, "tail"), parse(TEXT, "steady"), parse(TEXT, "fast")
    assert (fast.request_p99_us, steady.request_p99_us, tail.request_p99_us) == (1045, 45006, 200652)
    assert (fast.success, fast.failure) == (200, 3)  # the counters as before, next to the summary
    assert tail.request_duration_us == 8890006  # the summary's _sum and _count are left alone


def test_real_metrics_through_the_analysis_the_tail_fails_on_p99_not_on_the_mean() -> None:
    def revision(model: str) -> Counters:
        m = parse(TEXT, model)
        return Counters.of_pods({"pod-a": (m.success, m.failure, m.request_duration_us)},
                                {"pod-a": m.request_p99_us}).minus(Counters())

    canary, stable = revision("tail"), revision("steady")
    assert canary.mean_latency_s / stable.mean_latency_s == pytest.approx(1.078, abs=0.001)  # < 1.25
    a = judge(canary, stable, Thresholds(50, 0.01, 1.25, None))
    assert (a.verdict, a.reason) == (Verdict.FAIL, "p99 latency 4.46x the stable revision's > 1.25x "
                                                   "(200.7 ms vs 45.0 ms)")


def test_no_summary_or_an_empty_window_is_no_p99() -> None:
    assert parse(TEXT, "idle").request_p99_us is None  # NaN: no request in Triton's window
    assert parse(TEXT, "idle").success > 0  # ... while its counters remain
    without = "\n".join(line for line in TEXT.splitlines() if REQUEST_SUMMARY not in line) + "\n"
    assert parse(without, "tail").request_p99_us is None  # an image without summaries
    assert parse(without, "tail") == dataclasses.replace(parse(TEXT, "tail"), request_p99_us=None)
    assert parse(TEXT, "absent") == TritonMetrics()


def test_the_highest_p99_over_versions_and_only_the_99th_quantile() -> None:
    text = f"""\
# HELP {REQUEST_SUMMARY} Summary of inference request duration in microseconds
# TYPE {REQUEST_SUMMARY} summary
{REQUEST_SUMMARY}_count{{model="m",version="1"}} 10
{REQUEST_SUMMARY}_sum{{model="m",version="1"}} 1000
{REQUEST_SUMMARY}{{model="m",version="1",quantile="0.5"}} 90
{REQUEST_SUMMARY}{{model="m",version="1",quantile="0.99"}} 120
{REQUEST_SUMMARY}{{model="m",version="1",quantile="0.999"}} 990
{REQUEST_SUMMARY}_count{{model="m",version="2"}} 10
{REQUEST_SUMMARY}_sum{{model="m",version="2"}} 1000
{REQUEST_SUMMARY}{{model="m",version="2",quantile="0.990000"}} 150
{REQUEST_SUMMARY}_count{{model="n",version="1"}} 10
{REQUEST_SUMMARY}_sum{{model="n",version="1"}} 1000
{REQUEST_SUMMARY}{{model="n",version="1",quantile="0.99"}} 9999
"""
    assert parse(text, "m").request_p99_us == 150
    assert parse(text, "n").request_p99_us == 9999


@pytest.mark.parametrize(("label", "expected"), [
    ("0.99", True), ("0.990000", True), ("9.9e-1", True), ("0.999", False), ("0.9", False), ("", False),
    ("x", False), (None, False),
])
def test_is_p99(label: str | None, expected: bool) -> None:
    assert is_p99(label) is expected


# -- from Prometheus ---------------------------------------------------------------------------------------------------


def series(name: str, value: float | str, pod: str = "pod-a", **labels: str) -> dict[str, object]:
    metric = {"__name__": name, "namespace": "ns1", "pod": pod, "job": "triton", "instance": "10.0.0.1:8002", **labels}
    return {"metric": metric, "value": [NOW, str(value)]}


def sampled(pod: str) -> dict[str, object]:
    metric = {"__name__": prometheus.SAMPLE_TIME, "namespace": "ns1", "pod": pod}
    return {"metric": metric, "value": [NOW, str(NOW - 2)]}


def answer(*result: dict[str, object]) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(result)}}


def test_the_query_asks_for_the_p99_series_of_the_model_only() -> None:
    q = build_query("ml", ["pod-a"], "my.model")
    assert f'{REQUEST_SUMMARY}{{namespace="ml",pod=~"pod-a",model="my.model",quantile="0.99"}}' in q
    assert q.count(" or ") == 2


def test_prometheus_p99_per_pod() -> None:
    v1, v2 = {"model": "m", "version": "1"}, {"model": "m", "version": "2"}
    result = [
        series("nv_inference_request_success", 100, "pod-a", **v1),
        series(REQUEST_SUMMARY, 41_000, "pod-a", quantile="0.99", **v1),
        series(REQUEST_SUMMARY, 45_000, "pod-a", quantile="0.99", **v2),  # versions: the highest
        series(REQUEST_SUMMARY, 41_000, "pod-a", quantile="0.99", **{**v1, "job": "other"}),  # scraped twice
        series(REQUEST_SUMMARY, 99_000, "pod-a", quantile="0.5", **v1),  # not the p99
        series(REQUEST_SUMMARY, 77_000, "pod-a", quantile="0.99", model="other", version="1"),
        sampled("pod-a"),
        series("nv_inference_request_success", 50, "pod-b", **v1),
        series(REQUEST_SUMMARY, "NaN", "pod-b", quantile="0.99", **v1),  # nothing in Triton's window
        sampled("pod-b"),
        series("nv_inference_request_success", 10, "pod-c", **v1),  # an image without summaries
        sampled("pod-c"),
    ]
    got = parse_response(answer(*result), "ns1", ["pod-a", "pod-b", "pod-c", "pod-d"], "m", 60)
    assert {pod: None if m is None else m.request_p99_us for pod, m in got.items()} == {
        "pod-a": 45_000, "pod-b": None, "pod-c": None, "pod-d": None}
    assert got["pod-a"] is not None and got["pod-a"].success == 100
    assert got["pod-b"] is not None and got["pod-b"].success == 50  # counters without a p99 still count


def test_the_real_text_has_nan_for_an_empty_window() -> None:
    assert any(line.startswith(f'{REQUEST_SUMMARY}{{') and 'model="idle"' in line and 'quantile="0.99"' in line
               and math.isnan(float(line.rsplit(" ", 1)[1])) for line in TEXT.splitlines())
