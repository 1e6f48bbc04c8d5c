"""Triton's Prometheus text -> the counters modeldeploy decides on (pure, prometheus-client's parser)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

# Triton metric name -> TritonMetrics field. Counters are cumulative since the server started.
_FIELDS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_duration_us",
    "nv_inference_queue_duration_us": "queue_duration_us",
    "nv_inference_compute_infer_duration_us": "compute_duration_us",
    "nv_inference_pending_request_count": "pending",
}

# Triton's request latency summary (with `--metrics-config summary_latencies=true`, see
# resources/deployment.py triton_args): one series per quantile over a sliding window of the last
# 48-60 s (prometheus-cpp's default Summary: max_age 60 s in 5 age buckets, not configurable in
# Triton), NaN while the window holds no request. Only successful requests are observed, like
# nv_inference_request_duration_us. Its _count and _sum are cumulative and not used here.
REQUEST_SUMMARY: Final = "nv_inference_request_summary_us"
P99_QUANTILE: Final = 0.99


def is_p99(quantile: str | None) -> bool:
    """Whether a `quantile` label value names the 0.99 quantile ("0.99", "0.990000", ...)."""
    try:
        return quantile is not None and float(quantile) == P99_QUANTILE
    except ValueError:
        return False


@dataclass(frozen=True)
class TritonMetrics:
    """One pod's metrics for one model (summed over the model's versions)."""

    success: float = 0.0
    failure: float = 0.0
    inferences: float = 0.0
    executions: float = 0.0
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    compute_duration_us: float = 0.0
    pending: float = 0.0
    # p99 request duration over Triton's summary window (the last 48-60 s), the highest over the
    # model's versions; None when Triton does not export it (summaries off, an older image) or
    # the window holds no successful request.
    request_p99_us: float | None = None
    gpu_utilization: float | None = None  # 0..1 averaged over the pod's GPUs; None without GPUs
    # When the values were taken, on the source's clock (Prometheus: the scrape's time); None: just now.
    # Rates divide by the time between samples, not between reads: a read may return the same sample.
    sampled_at: float | None = None

    @property
    def requests(self) -> float:
        return self.success + self.failure


def parse(text: str, model: str) -> TritonMetrics:
    """Sum the model's samples; raise ValueError on text that is not Prometheus exposition."""
    values: dict[str, float] = {}
    gpu: list[float] = []
    p99: list[float] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name == "nv_gpu_utilization":
                gpu.append(float(sample.value))
                continue
            if sample.labels.get("model") != model:
                continue
            if name == REQUEST_SUMMARY:
                if is_p99(sample.labels.get("quantile")) and math.isfinite(sample.value):
                    p99.append(float(sample.value))  # NaN: no request in the window
                continue
            field = _FIELDS.get(name)
            if field is None:
                continue
            values[field] = values.get(field, 0.0) + float(sample.value)
    return TritonMetrics(**values, request_p99_us=max(p99) if p99 else None,
                         gpu_utilization=(sum(gpu) / len(gpu)) if gpu else None)
