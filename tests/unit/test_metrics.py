"""Parsing Triton's metrics and turning two scrapes into per-pod autoscaling values (pure)."""

from __future__ import annotations

import pytest

from modeldeploy.autoscale.rates import pod_value
from modeldeploy.metrics.parse import TritonMetrics, parse

# The shape Triton 2.51 exports on :8002 (two models, two versions of one, one GPU).
TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits",version="1"} 90
nv_inference_request_success{model="digits",version="2"} 10
nv_inference_request_success{model="other",version="1"} 5
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="digits",reason="BACKEND",version="1"} 3
nv_inference_request_failure{model="digits",reason="REJECTED",version="1"} 1
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="digits",version="1"} 400
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="digits",version="1"} 25
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="digits",version="1"} 1040000
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="digits",version="1"} 520000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="digits",version="1"} 7
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-2"} 0.7
"""


def test_parse_sums_versions_and_reasons_of_one_model() -> None:
    m = parse(TEXT, "digits")
    assert (m.success, m.failure, m.requests) == (100, 4, 104)
    assert (m.inferences, m.executions) == (400, 25)
    assert m.request_duration_us == 1_040_000 and m.queue_duration_us == 520_000
    assert m.pending == 7
    assert m.gpu_utilization == pytest.approx(0.6)
    assert parse(TEXT, "absent") == TritonMetrics(gpu_utilization=pytest.approx(0.6))


def test_parse_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse("<html>not metrics</html>\n{", "digits")


def test_rates_from_two_scrapes() -> None:
    before = TritonMetrics(success=100, failure=0, queue_duration_us=100_000)
    now = TritonMetrics(success=300, failure=0, queue_duration_us=10_100_000, pending=3, gpu_utilization=0.42)
    assert pod_value("inferenceRate", now, before, 2.0) == 100
    assert pod_value("queueTime", now, before, 2.0) == pytest.approx(0.05)  # 10 s of queueing over 200 requests
    assert pod_value("pendingRequests", now, None, 2.0) == 3
    assert pod_value("gpuUtilization", now, None, 2.0) == pytest.approx(42)


def test_counter_reset_after_pod_restart_counts_from_zero() -> None:
    before = TritonMetrics(success=5000)
    restarted = TritonMetrics(success=40)
    assert pod_value("inferenceRate", restarted, before, 2.0) == 20


def test_failed_scrape_is_missing_not_zero() -> None:
    assert pod_value("inferenceRate", None, TritonMetrics(success=1), 2.0) is None
    assert pod_value("inferenceRate", TritonMetrics(success=1), None, 2.0) is None  # first sight: no rate yet
    assert pod_value("gpuUtilization", TritonMetrics(), None, 2.0) is None  # no GPUs exported
