"""The autoscaling loop: every tick, scrape each ready serving pod, ask the pure recommender,
and record a changed decision in status.autoscaling (the reconciler then scales).

State that must survive a restart (panic mode, when the need first dropped, the last scale) is
in status; the per-pod counters and the sample windows are rebuilt from the next scrapes, and
with an empty window the recommender holds, so a restart never scales anything down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from . import api, constants
from .autoscale.rates import pod_value
from .autoscale.recommender import Memory, Recommendation, Sample, recommend
from .config import Settings
from .kube import events
from .kube.cache import Reader, WatchCache
from .kube.client import Conflict, Kube, NotFound
from .metrics.parse import TritonMetrics
from .metrics.source import MetricsSource, source_from_settings
from .planning.observe import pod_ready, pod_unschedulable
from .timefmt import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)


def memory_from_status(st: Mapping[str, Any]) -> Memory:
    return Memory(parse_rfc3339(st.get("panicUntil")), parse_rfc3339(st.get("belowSince")),
                  parse_rfc3339(st.get("lastScaleTime")))


def status_of(rec: Recommendation, spec: api.AutoscalingSpec) -> dict[str, Any]:
    value = rec.metric_value
    if value is None:
        shown = None
    elif spec.metric == "queueTime":
        shown = f"{value * 1000:.0f}ms"
    elif spec.metric == "gpuUtilization":
        shown = f"{value:.0f}%"
    else:
        shown = f"{value:.2f}"
    return {"desiredReplicas": rec.desired, "metricValue": shown, "mode": rec.mode, "reason": rec.reason,
            "panicUntil": rfc3339(rec.memory.panic_until), "belowSince": rfc3339(rec.memory.below_since),
            "lastScaleTime": rfc3339(rec.memory.last_scale_at), "limitedByCapacity": rec.limited_by_capacity}


class Autoscaler:
    """One instance per operator; `tick()` is called every few seconds from its own thread."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.reader: Reader = kube  # the watch-fed cache in the operator (operator_main)
        self.cache: WatchCache | None = None
        self._last: dict[tuple[str, str, str], tuple[float, TritonMetrics]] = {}  # (ns, md, pod) -> scrape
        self._samples: dict[tuple[str, str], list[Sample]] = {}
        self.metrics: MetricsSource = source_from_settings(settings)

    def tick(self, mds: list[dict[str, Any]]) -> None:
        """One decision for each autoscaled ModelDeployment in `mds` (the tick's one LIST)."""
        seen: set[tuple[str, str]] = set()
        for md in mds:
            if not (md.get("spec", {}).get("autoscaling") or {}).get("enabled"):
                continue
            key = (md["metadata"]["namespace"], md["metadata"]["name"])
            seen.add(key)
            try:
                self._one(md)
            except Exception as e:  # one object never stops the loop; the next tick retries
                log.warning("autoscaling %s/%s failed: %s", *key, e)
        for key in set(self._samples) - seen:  # forget deleted or no longer autoscaled objects
            self._samples.pop(key, None)
            for k in [k for k in self._last if k[:2] == key]:
                self._last.pop(k, None)

    def _one(self, md: Mapping[str, Any]) -> None:
        meta = md["metadata"]
        ns, name = meta["namespace"], meta["name"]
        spec = api.parse_spec(md.get("spec") or {}, name=name)
        auto = spec.autoscaling
        st = (md.get("status") or {}).get("autoscaling") or {}
        current = st.get("desiredReplicas") if isinstance(st.get("desiredReplicas"), int) else spec.replicas
        current = max(auto.min_replicas, min(auto.max_replicas, current))
        pods = self.reader.list("Pod", ns, {constants.LABEL_NAME: name})
        ready = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods
                 if pod_ready(p) and p.get("status", {}).get("podIP")}
        unschedulable = sum(1 for p in pods if pod_unschedulable(p))
        now = time.time()
        scraped = self.metrics.pods(ns, ready, spec.model.name)
        values: list[float | None] = []
        for pod in ready:
            metrics = scraped.get(pod)
            at = metrics.sampled_at if metrics is not None and metrics.sampled_at is not None else now
            before = self._last.get((ns, name, pod))
            if metrics is not None and before is not None and at <= before[0]:
                values.append(None)  # the same sample again (Prometheus has not scraped since): no news
                continue
            values.append(pod_value(auto.metric, metrics, before[1] if before else None,
                                    at - before[0] if before else 0.0))
            if metrics is not None:
                self._last[(ns, name, pod)] = (at, metrics)
        window = [s for s in self._samples.get((ns, name), []) if now - s.at <= auto.stable_window]
        if values:
            window.append(Sample(now, tuple(values)))
        self._samples[(ns, name)] = window
        rec = recommend(auto, current, window, now, memory_from_status(st), pending_unschedulable=unschedulable)
        wanted = status_of(rec, auto)
        changed = {k: v for k, v in wanted.items() if k != "metricValue" and k != "reason" and st.get(k) != v}
        if rec.desired != current or changed.keys() - {"mode"}:
            try:  # the decision rests on this version's status: a newer one refuses it (409)
                written = self.kube.patch_status(constants.KIND, ns, name, {"autoscaling": wanted},
                                                 resource_version=meta.get("resourceVersion"))
            except (NotFound, Conflict):
                return  # gone, or changed since it was read: the next tick decides on the new version
            if self.cache is not None and written:
                self.cache.upsert(constants.KIND, written)
            if rec.desired != current:
                events.post(self.kube, md, "Normal", "Scaled", rec.reason)
                log.info("%s/%s: %s", ns, name, rec.reason)
            elif rec.limited_by_capacity and not st.get("limitedByCapacity"):
                events.post(self.kube, md, "Warning", "InsufficientGPUs", rec.reason)
