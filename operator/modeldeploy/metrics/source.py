"""Where per-pod Triton metrics come from: each pod's :8002 directly, or a Prometheus server.

Consumers (autoscaler, canary analysis) ask a `MetricsSource` and get the same `TritonMetrics`
shape either way, so the choice is a setting (`MD_METRICS_SOURCE`), not code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..constants import PORT_METRICS
from . import prometheus
from .parse import TritonMetrics
from .scrape import scrape

if TYPE_CHECKING:
    from ..config import Settings


@runtime_checkable
class MetricsSource(Protocol):
    """Per-pod metrics of one model; a pod without (current) data is None, never zeros."""

    def pods(self, namespace: str, pods: Mapping[str, str], model: str) -> dict[str, TritonMetrics | None]:
        """`pods` maps pod name -> pod IP; the answer has one entry per pod name."""
        ...


def metrics_url(ip: str, port: int = PORT_METRICS) -> str:
    """Triton's /metrics on a pod IP (IPv6 addresses bracketed)."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


@dataclass(frozen=True)
class ScrapeSource:
    """Scrape every pod's Triton metrics port concurrently (no Prometheus needed)."""

    timeout: float = 1.0
    port: int = PORT_METRICS

    def pods(self, namespace: str, pods: Mapping[str, str], model: str) -> dict[str, TritonMetrics | None]:
        """A pod without an IP yet, or that does not answer within `timeout`, is None."""
        urls = {name: metrics_url(ip, self.port) for name, ip in pods.items() if ip}
        scraped = scrape(dict.fromkeys(urls.values()), model, self.timeout)
        return {name: scraped.get(urls[name]) if name in urls else None for name in pods}


@dataclass(frozen=True)
class PrometheusSource:
    """One PromQL instant query per call to the Prometheus at `url` (see prometheus.py).

    `max_age` (seconds) should be at least twice the scrape interval: one missed scrape is not
    yet missing data, a pod gone for longer is. The URL may hold credentials: kept out of repr.
    """

    url: str = field(repr=False)
    timeout: float = prometheus.DEFAULT_TIMEOUT
    max_age: float = prometheus.DEFAULT_MAX_AGE

    def pods(self, namespace: str, pods: Mapping[str, str], model: str) -> dict[str, TritonMetrics | None]:
        """Pod IPs are not needed: series are found by their namespace and pod labels."""
        return prometheus.pod_metrics(self.url, namespace, pods.keys(), model, self.timeout, self.max_age)


def source_from_settings(settings: Settings) -> MetricsSource:
    """The source `MD_METRICS_SOURCE` names (Settings has already checked the URL is there)."""
    if settings.metrics_source == "prometheus":
        return PrometheusSource(settings.prometheus_url)
    return ScrapeSource()
