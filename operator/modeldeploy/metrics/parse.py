"""Triton's Prometheus text -> the counters modeldeploy decides on (pure, prometheus-client's parser)."""

from __future__ import annotations

from dataclasses import dataclass

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
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name == "nv_gpu_utilization":
                gpu.append(float(sample.value))
                continue
            field = _FIELDS.get(name)
            if field is None or sample.labels.get("model") != model:
                continue
            values[field] = values.get(field, 0.0) + float(sample.value)
    return TritonMetrics(**values, gpu_utilization=(sum(gpu) / len(gpu)) if gpu else None)
