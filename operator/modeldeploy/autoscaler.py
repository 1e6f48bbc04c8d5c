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
from dataclasses import dataclass
from typing import Any

from . import api, constants
from .activation import ActivatorLink
from .autoscale import zero
from .autoscale.rates import pod_value
from .autoscale.recommender import Memory, Recommendation, Sample, recommend
from .config import Settings
from .kube import events
from .kube.cache import Reader, WatchCache
from .kube.client import Conflict, Kube, NotFound
from .metrics.parse import TritonMetrics
from .metrics.source import MetricsSource, source_from_settings
from .planning.build import CONDITION as ARTIFACT_READY
from .planning.observe import pod_ready, pod_unschedulable
from .rollout.canary import UNDER_WAY
from .timefmt import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

# status.autoscaling.lastRequestTime is for people: it is rewritten at most this often while
# requests flow (a status write every tick would cost the API server what a busy model earns).
LAST_REQUEST_RECORD_SECONDS = 60.0


@dataclass(frozen=True)
class RequestCounts:
    """One read of each Ready pod's request counter (Triton's success + failure) and what it told."""

    at: float
    counts: dict[str, float]
    last_request_at: float | None


def rollout_or_build(status: Mapping[str, Any]) -> tuple[bool, bool]:
    """(a canary or rollout is under way, a revision is building), from status alone."""
    phase = (status.get("canary") or {}).get("phase")
    rolling = bool(status.get("canaryRevision")) or phase in UNDER_WAY
    building = any(c.get("type") == ARTIFACT_READY and c.get("status") == "Unknown"
                   for c in status.get("conditions") or [] if isinstance(c, dict))
    return rolling, building


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
        self._requests: dict[tuple[str, str], RequestCounts] = {}  # models that may go to zero
        self.metrics: MetricsSource = source_from_settings(settings)
        self.link: ActivatorLink | None = None  # set when the activator is on (operator_main)

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
            self._requests.pop(key, None)
            for k in [k for k in self._last if k[:2] == key]:
                self._last.pop(k, None)

    def scales_to_zero(self, spec: api.ModelDeploymentSpec) -> bool:
        """Whether this model may go to zero pods here: it asks for it and the activator is on."""
        return spec.autoscaling.scales_to_zero and self.link is not None

    def wake(self, md: Mapping[str, Any], demand_at: float) -> bool:
        """Demand for a model at zero: desiredReplicas 0 -> 1 now, not at the next tick (True when
        written). Called from the demand watch; the status write's event queues the pass."""
        meta = md["metadata"]
        spec = api.parse_spec(md.get("spec") or {}, name=meta["name"])
        status = md.get("status") or {}
        st = status.get("autoscaling") or {}
        if not self.scales_to_zero(spec) or st.get("desiredReplicas") != 0:
            return False
        return self._at_zero(md, spec.autoscaling, status, demand_at)

    def _at_zero(self, md: Mapping[str, Any], auto: api.AutoscalingSpec, status: Mapping[str, Any],
                 demand_at: float | None) -> bool:
        """A model at zero stays there until demand newer than its going to zero, or a new revision
        to roll out (which needs a pod: it comes back, and idles out again after the rollout)."""
        meta = md["metadata"]
        st = status.get("autoscaling") or {}
        now = time.time()
        rolling, _ = rollout_or_build(status)
        decision = zero.decide(auto, zero.ZeroFacts(now=now, replicas=0, ready=0, last_demand_at=demand_at,
                                                    zero_since=parse_rfc3339(st.get("zeroSince"))))
        reason = decision.reason
        if decision.replicas != 1 and rolling:
            reason = "a new revision rolls out: 0 -> 1 (it idles out again after the rollout)"
        elif decision.replicas != 1:
            return False
        wanted = {"desiredReplicas": 1, "reason": reason, "mode": "hold", "zeroSince": None,
                  "upSince": rfc3339(now, micro=True), "lastScaleTime": rfc3339(now)}
        if not self._write(md, wanted):
            return False
        self._requests.pop((meta["namespace"], meta["name"]), None)  # the idle clock starts again
        events.post(self.kube, md, "Normal", "ScaledFromZero", reason)
        log.info("%s/%s: %s", meta["namespace"], meta["name"], reason)
        return True

    def _write(self, md: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
        """status.autoscaling, with the read version as precondition; False when refused (gone or
        changed since: the next tick or demand decides on the new version)."""
        meta = md["metadata"]
        try:
            written = self.kube.patch_status(constants.KIND, meta["namespace"], meta["name"],
                                             {"autoscaling": dict(wanted)},
                                             resource_version=meta.get("resourceVersion"))
        except (NotFound, Conflict):
            return False
        if self.cache is not None and written:
            self.cache.upsert(constants.KIND, written)
        return True

    def _idle(self, key: tuple[str, str], auto: api.AutoscalingSpec, status: Mapping[str, Any], replicas: int,
              ready: dict[str, str], scraped: Mapping[str, TritonMetrics | None], now: float) -> tuple[
                  zero.ZeroDecision, float | None]:
        """Whether a serving model goes to zero now, and when it last served a request (None: unknown).

        The idle clock lives in this process: after a restart or a new leader it starts again from
        the first two reads (never too early; status.autoscaling.lastRequestTime is for people)."""
        after = {pod: (m.requests if (m := scraped.get(pod)) is not None else None) for pod in ready}
        before = self._requests.get(key)
        last = zero.last_request_at(before.last_request_at if before else None, now,
                                    before.counts if before else None, before.at if before else now, after)
        if all(v is not None for v in after.values()):
            self._requests[key] = RequestCounts(now, {p: v for p, v in after.items() if v is not None}, last)
        # else a failed scrape: `last` is None (unknown, never idle) and the next good read is
        # compared with the last good one, so a request in between is still seen
        st = status.get("autoscaling") or {}
        rolling, building = rollout_or_build(status)
        if self.link is None or not self.link.addresses():
            return zero.ZeroDecision(None, "the activator has no Ready replica: never to zero without it"), last
        facts = zero.ZeroFacts(
            now=now, replicas=replicas, ready=len(ready), last_request_at=last,
            last_demand_at=self.link.demand_at(*key),
            up_since=parse_rfc3339(st.get("upSince")),
            pending_requests=int(sum(m.pending for m in scraped.values() if m is not None)),
            canary=rolling, building=building)
        return zero.decide(auto, facts), last

    def _one(self, md: Mapping[str, Any]) -> None:
        meta = md["metadata"]
        ns, name = meta["namespace"], meta["name"]
        spec = api.parse_spec(md.get("spec") or {}, name=name)
        auto = spec.autoscaling
        status = md.get("status") or {}
        st = status.get("autoscaling") or {}
        to_zero = self.scales_to_zero(spec)
        if to_zero and st.get("desiredReplicas") == 0:
            self._at_zero(md, auto, status, self.link.demand_at(ns, name) if self.link is not None else None)
            return
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
        to_zero_reason = ""
        if to_zero:
            decision, last = self._idle((ns, name), auto, status, current, ready, scraped, now)
            shown = parse_rfc3339(st.get("lastRequestTime"))
            if last is not None and (shown is None or last - shown >= LAST_REQUEST_RECORD_SECONDS):
                wanted["lastRequestTime"] = rfc3339(last)
            if decision.replicas == 0:
                to_zero_reason = decision.reason
                wanted.update(desiredReplicas=0, reason=decision.reason, zeroSince=rfc3339(now, micro=True),
                              lastScaleTime=rfc3339(now), belowSince=None, panicUntil=None)
        desired = 0 if to_zero_reason else rec.desired
        changed = {k: v for k, v in wanted.items() if k != "metricValue" and k != "reason" and st.get(k) != v}
        if desired != current or changed.keys() - {"mode"}:
            # the decision rests on this version's status: a newer one refuses it (409)
            if not self._write(md, wanted):
                return  # gone, or changed since it was read: the next tick decides on the new version
            if to_zero_reason:
                events.post(self.kube, md, "Normal", zero.REASON_SCALED_TO_ZERO, to_zero_reason)
                log.info("%s/%s: %s", ns, name, to_zero_reason)
            elif rec.desired != current:
                events.post(self.kube, md, "Normal", "Scaled", rec.reason)
                log.info("%s/%s: %s", ns, name, rec.reason)
            elif rec.limited_by_capacity and not st.get("limitedByCapacity"):
                events.post(self.kube, md, "Warning", "InsufficientGPUs", rec.reason)
