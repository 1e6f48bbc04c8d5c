"""The activator's Prometheus metrics, on a registry of its own (served at /metrics on the admin port).

Labelled by the ModelDeployment (`namespace`, `name`): demand is visible while the model has no pod
to report Triton's metrics. `held` is the gauge of requests waiting now; the counters say what
became of every request the activator received.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX: Final = "modeldeploy_activator"
LABELS: Final = ("namespace", "name")
REJECT_REASONS: Final = ("over_cap", "unknown_model", "draining")
# Cold starts run from under a second (a cached artifact on a warm node) to minutes (a new node,
# a large model): buckets to 10 minutes.
COLD_START_BUCKETS: Final = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class ActivatorMetrics:
    """Counters, gauges and histograms of one activator."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(f"{PREFIX}_requests", "Requests received for a model at zero", LABELS, registry=r)
        self.held = Gauge(f"{PREFIX}_held_requests", "Requests held now, waiting for a Ready pod", LABELS,
                          registry=r)
        self.held_total = Counter(f"{PREFIX}_held", "Requests that had to wait for a Ready pod", LABELS, registry=r)
        self.forwarded = Counter(f"{PREFIX}_forwarded", "Requests forwarded to the model's pods", LABELS,
                                 registry=r)
        self.timed_out = Counter(f"{PREFIX}_timed_out", "Held requests answered 503 because no pod was Ready in "
                                 "time", LABELS, registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected", "Requests refused at once (429/503): over the per-model cap, "
                                "no model registered for them, or the activator stopping", ["reason"], registry=r)
        self.rejected_model = Counter(f"{PREFIX}_rejected_model", "Requests refused at once for a known model, "
                                      "by reason", [*LABELS, "reason"], registry=r)
        self.backend_errors = Counter(f"{PREFIX}_backend_errors", "Forwarded requests that failed on the way to "
                                      "or from the pod (answered 502)", LABELS, registry=r)
        self.cold_start = Histogram(f"{PREFIX}_cold_start_seconds", "From the first held request of a model at "
                                    "zero to its first Ready pod", LABELS, buckets=COLD_START_BUCKETS, registry=r)
        self.hold_seconds = Histogram(f"{PREFIX}_hold_seconds", "How long each held request waited before it was "
                                      "forwarded", LABELS, buckets=COLD_START_BUCKETS, registry=r)
        self.demand_signals = Counter(f"{PREFIX}_demand_signals", "Demand written for the operator (one per "
                                      "model per renewal)", ["result"], registry=r)
        self.routes = Gauge(f"{PREFIX}_routes", "Models registered as at zero", registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for result in ("ok", "error"):
            self.demand_signals.labels(result=result)
