"""The operator's own Prometheus metrics (served on /metrics by prometheus-client)."""

from __future__ import annotations

import contextlib
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("modeldeploy_reconciles_total", "Reconcile passes by result (changed, unchanged, error, invalid)",
                     ["result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("modeldeploy_reconcile_duration_seconds", "Duration of one reconcile pass",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)
API_WRITES = Counter("modeldeploy_api_writes_total", "Write requests sent to the API server, by verb", ["verb"],
                     registry=REGISTRY)
ERRORS = Counter("modeldeploy_reconcile_errors_total", "Reconcile passes that raised, by exception type", ["type"],
                 registry=REGISTRY)
MANAGED = Gauge("modeldeploy_managed_modeldeployments", "ModelDeployments managed by this operator, by phase",
                ["phase"], registry=REGISTRY)
OBJECT_RECONCILES = Counter("modeldeploy_object_reconciles_total",
                            "Completed reconcile passes of one ModelDeployment since the operator started",
                            ["namespace", "name"], registry=REGISTRY)
CANARY_WEIGHT = Gauge("modeldeploy_canary_weight_percent", "Share of pods (and traffic) on the canary revision",
                      ["namespace", "name"], registry=REGISTRY)
CANARY_STEP = Gauge("modeldeploy_canary_step", "Index of the canary's current step (0-based)",
                    ["namespace", "name"], registry=REGISTRY)
CANARY_VERDICTS = Counter("modeldeploy_canary_analyses_total", "Canary analyses by verdict (Pass, Fail, Inconclusive)",
                          ["verdict"], registry=REGISTRY)
CANARY_OUTCOMES = Counter("modeldeploy_canary_outcomes_total", "Finished canaries by outcome (Promoted, RolledBack)",
                          ["outcome"], registry=REGISTRY)
IS_LEADER = Gauge("modeldeploy_leader", "1 on the replica that holds the leader Lease (or runs alone), else 0",
                  registry=REGISTRY)
CACHE_OBJECTS = Gauge("modeldeploy_cache_objects", "Objects held in the watch-fed cache, by kind", ["kind"],
                      registry=REGISTRY)
RELISTS = Counter("modeldeploy_cache_relists_total", "Full LISTs of every cached kind into the cache (start and "
                  "the periodic safety net)", registry=REGISTRY)
QUEUE_DEPTH = Gauge("modeldeploy_work_queue_depth", "ModelDeployments queued or in a pass", registry=REGISTRY)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def record_phase(namespace: str, name: str, phase: str | None) -> None:
    """Track each ModelDeployment's phase (None when it is gone) and refresh the per-phase gauge.

    The reconciler calls this at the end of every completed pass, so it also counts the passes
    per object: a restarted operator's first completed pass for an object is then observable.
    """
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
            with contextlib.suppress(KeyError):  # no completed pass of it in this process
                OBJECT_RECONCILES.remove(namespace, name)
        else:
            _phases[(namespace, name)] = phase
            OBJECT_RECONCILES.labels(namespace=namespace, name=name).inc()
        counts: dict[str, int] = {}
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p in ("Pending", "Loading", "Ready", "Progressing", "Degraded", "Failed"):
            MANAGED.labels(phase=p).set(counts.get(p, 0))


def serve(port: int) -> None:
    """Expose /metrics on `port` (all interfaces: Prometheus scrapes the pod IP)."""
    start_http_server(port, registry=REGISTRY)


def record_canary(namespace: str, name: str, phase: str, weight: float, step: int) -> None:
    """The canary's weight and step; a finished canary shows weight 0."""
    live = phase not in ("Promoted", "RolledBack")
    CANARY_WEIGHT.labels(namespace=namespace, name=name).set(weight if live else 0)
    CANARY_STEP.labels(namespace=namespace, name=name).set(step)
