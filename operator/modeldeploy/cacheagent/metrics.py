"""The agent's Prometheus metrics, on a registry of its own (served at /metrics).

A registry of its own, not prometheus_client's global one, so that nothing else imported into the
process (and no second agent in a test) can add series to, or collide with, the agent's.

Hits and misses count artifact requests (GET of a manifest: one per pod start); fills count trips
to the store, so "N pods, one fill" reads directly off the counters.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX: Final = "modeldeploy_cache"
FILL_RESULTS: Final = ("filled", "not_built", "too_large", "no_room", "store_error", "corrupt_in_store", "error")
DROP_REASONS: Final = ("partial", "invalid", "corrupt")


class AgentMetrics:
    """Counters and gauges of one agent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hits = Counter(f"{PREFIX}_hits", "Artifact requests answered from a copy already on the node", registry=r)
        self.misses = Counter(f"{PREFIX}_misses", "Artifact requests that had to wait for a fill from the store",
                              registry=r)
        self.served_bytes = Counter(f"{PREFIX}_served_bytes", "Bytes sent to pods (files and manifests)", registry=r)
        self.filled_bytes = Counter(f"{PREFIX}_filled_bytes", "Bytes downloaded from the artifact store", registry=r)
        self.fills = Counter(f"{PREFIX}_fills", "Fills from the store, by result", ["result"], registry=r)
        self.evictions = Counter(f"{PREFIX}_evictions", "Artifacts evicted to stay within the byte budget",
                                 registry=r)
        self.evicted_bytes = Counter(f"{PREFIX}_evicted_bytes", "Bytes evicted to stay within the byte budget",
                                     registry=r)
        self.dropped = Counter(f"{PREFIX}_dropped", "Copies removed that could not be served: partial fills and "
                               "invalid copies found at start, corrupt files found when serving", ["reason"],
                               registry=r)
        self.bytes = Gauge(f"{PREFIX}_bytes", "Bytes of artifact files held on the node", registry=r)
        self.max_bytes = Gauge(f"{PREFIX}_max_bytes", "The byte budget (MD_CACHE_MAX_BYTES)", registry=r)
        self.artifacts = Gauge(f"{PREFIX}_artifacts", "Artifacts held on the node", registry=r)
        self.fills_in_progress = Gauge(f"{PREFIX}_fills_in_progress", "Fills running now", registry=r)
        for result in FILL_RESULTS:  # every series exists from the start: rate() needs a zero to begin from
            self.fills.labels(result=result)
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)
