"""One reconcile pass: read the world, decide (pure planning/ and resources/), write the difference.

Level-based: every pass computes the whole desired state from the spec and what is observed, so
a restarted operator, a missed event or a user's edit all converge the same way. The canary's
and the switch's state live in status, never in the operator's memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api, constants, telemetry, timefmt
from .activation import ActivatorLink
from .autoscale import zero
from .builds import Builder
from .config import Settings
from .kube import events
from .kube.cache import CachedReader, NotSynced, Reader, WatchCache
from .kube.client import Conflict, Forbidden, Kube, NamespaceTerminating, NotFound
from .kube.replay import ReplayReader
from .metrics.source import MetricsSource, source_from_settings
from .planning import build as build_plan
from .planning import canary_plan, drift, observe, ownership, status, switch
from .resources import Images, build_deployment, build_pdb, build_services, image_inputs, labels, networkpolicy
from .resources import activator as activator_res
from .resources.deployment import ArtifactFetch
from .resources.httproute import build_httproute
from .rollout import canary
from .rollout.analysis import Counters
from .rollout.traffic import route_weight
from .validation import Validator

log = logging.getLogger(__name__)

ROUTE_API_RECHECK_SECONDS = 60.0  # how long "is the Gateway API installed" is trusted
CONFLICT_RETRIES = 8  # passes run again at once after a 409, before the backoff retry takes over
RETRY_BASE_SECONDS = 1.0  # a failed pass is retried after 1, 2, 4 ... seconds
RETRY_MAX_SECONDS = 60.0


@dataclass
class PassResult:
    """What one pass did (for logs, metrics and tests)."""

    writes: int = 0
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (event reason, message)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (event reason, message), Warning events
    created: list[str] = field(default_factory=list)  # "Kind name" of each child this pass created
    phase: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def manual_command(annotations: Mapping[str, str]) -> str | None:
    """What the user asked of the canary by annotation; abort wins over promote, promote over pause."""
    if constants.ANNOTATION_ABORT in annotations:
        return canary.Manual.ABORT
    if constants.ANNOTATION_PROMOTE in annotations:
        return canary.Manual.PROMOTE
    pause = annotations.get(constants.ANNOTATION_PAUSE)
    if pause is not None and pause.lower() not in ("false", "no", "0"):
        return canary.Manual.PAUSE
    return None


def revision_counters(source: MetricsSource, pods: list[dict[str, Any]], revision: str, model: str,
                      namespace: str) -> Counters | None:
    """One revision's request counters over its ready pods (each pod's and the sum) and its p99
    latency (the highest pod p99, see analysis.revision_p99); None if any of them cannot be read.

    A revision without ready pods served nothing: zero counters (the analysis then has no stable
    yardstick, or too few canary requests for a verdict), not missing data.
    """
    ready = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods
             if p["metadata"].get("labels", {}).get(constants.LABEL_REVISION) == revision
             and observe.pod_ready(p) and p.get("status", {}).get("podIP")}
    if not ready:
        return Counters()
    scraped = source.pods(namespace, ready, model)
    if any(m is None for m in scraped.values()) or len(scraped) != len(ready):
        return None
    return Counters.of_pods({name: (m.success, m.failure, m.request_duration_us)
                             for name, m in scraped.items() if m is not None},
                            {name: m.request_p99_us for name, m in scraped.items() if m is not None})


def starting_pods(pods: list[dict[str, Any]], revision: str) -> tuple[str, ...]:
    """Addresses of the revision's pods that have one and are not being deleted (what `<name>-stable`
    will select once they are Ready), sorted."""
    return tuple(sorted({p["status"]["podIP"] for p in pods
                         if (p.get("metadata") or {}).get("labels", {}).get(constants.LABEL_REVISION) == revision
                         and not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("podIP")}))


class Reconciler:
    """Drives ModelDeployments toward their spec; safe to call from several threads."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.cache: WatchCache | None = None  # set by use_cache(): passes then read from the watches
        self.reader: Reader = kube
        self.is_leader: Callable[[], bool] = lambda: True  # only the leader replica writes
        self.wake: Callable[[str, str], None] = lambda namespace, name: None  # queue another model's pass
        self._guard = threading.Lock()
        self._state: dict[tuple[str, str], str] = {}  # key -> "running" | "pending"
        self._failures: dict[tuple[str, str], int] = {}  # consecutive failed passes, for the backoff
        self.retry_failed_passes = True
        self.metrics: MetricsSource = source_from_settings(settings)
        self.validator = Validator(kube, settings)
        self.builder = Builder(kube, settings)
        self.network_policy = networkpolicy.parse(settings.network_policy)  # a bad value fails at start
        if not settings.artifact_cache_enabled:  # no pod asks the agent: no way to it
            self.network_policy = dataclasses.replace(self.network_policy, cache_agent=None)
        self._route_api: tuple[str, float] | None = None  # (installed | missing | forbidden, when checked)
        self.link: ActivatorLink | None = None  # scale to zero: set when the activator is on (operator_main)

    def use_cache(self, cache: WatchCache) -> None:
        """Read from the watch-fed cache (API reads only for kinds not yet listed and for a child
        about to be created); the pass after a 409 reads from the API server."""
        self.cache = cache
        self.reader = CachedReader(cache, self.kube)

    def _remember(self, kind: str, written: Mapping[str, Any] | None) -> None:
        """What a write returned is the newest version: hold it, so the next pass does not start
        from the version it replaced (and lose a 409 round on it)."""
        if self.cache is not None and written and written.get("metadata"):
            self.cache.upsert(kind, dict(written))

    def known_models(self) -> list[dict[str, Any]]:
        """Every ModelDeployment the operator knows, for the artifacts their status records: the
        watch cache's (no API request); without one, what the reader lists cluster-wide."""
        if self.cache is not None:
            with contextlib.suppress(NotSynced):
                return self.cache.list(constants.KIND, None)
        try:
            return self.reader.list(constants.KIND, None)
        except Forbidden:  # RBAC for some namespaces only: a Job then decides, as before
            return []

    def _build_fenced(self, reader: Reader, md: Mapping[str, Any]) -> bool:
        """Whether the build pods' NetworkPolicy is ours and in place (or policies are off). The pass
        that finds it missing creates it with the other children; its watch event brings the next
        pass, which starts the Job."""
        if not self.network_policy.enabled:
            return True
        meta = md["metadata"]
        policy = reader.get_or_none("NetworkPolicy", meta["namespace"], networkpolicy.build_policy_name(meta["name"]))
        return policy is not None and ownership.controlled_by(policy, meta["uid"])

    def images(self) -> Images:
        return Images(serving=self.settings.serving_image, loader=self.settings.loader_image,
                      converter=self.settings.converter_image, pull_policy=self.settings.image_pull_policy,
                      serving_backend=self.settings.serving_backend,
                      max_download_bytes=self.settings.max_download_bytes)

    # --- coalescing: bursts of events for one object become one or two passes -------------------
    def request(self, namespace: str, name: str) -> None:
        """Run a pass for the object now, or once more after the running one; a pass that fails is
        retried here with backoff (kopf does not retry event handlers, and a decision must not wait
        for the next event or resync)."""
        if not self.is_leader():
            return  # a standby replica only keeps its cache warm
        key = (namespace, name)
        with self._guard:
            if key in self._state:
                self._state[key] = "pending"
                return
            self._state[key] = "running"
        try:
            while True:
                self._pass_with_retries(namespace, name)
                with self._guard:
                    if self._state.get(key) == "pending":
                        self._state[key] = "running"
                        continue
                    del self._state[key]
                    self._failures.pop(key, None)
                    return
        except BaseException as e:
            with self._guard:
                self._state.pop(key, None)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
            if isinstance(e, NamespaceTerminating):
                log.debug("%s/%s: namespace is being deleted; no pass until something else changes", *key)
                return
            if isinstance(e, Exception) and self.retry_failed_passes:
                delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (failures - 1))
                log.warning("%s/%s: pass failed (%s: %s); retrying in %.0fs", namespace, name,
                            type(e).__name__, e, delay)
                timer = threading.Timer(delay, self._retry, args=(namespace, name))
                timer.daemon = True
                timer.start()
            raise

    def _retry(self, namespace: str, name: str) -> None:
        with contextlib.suppress(Exception):  # request() already logged it and scheduled the next try
            self.request(namespace, name)

    def _pass_with_retries(self, namespace: str, name: str) -> PassResult:
        """A pass that lost a race (409: status or an annotation changed since it read the object)
        changed nothing; it runs again at once on fresh state, a few times. The first retry reads
        everything from the API server; later ones re-read only the ModelDeployment and reuse
        that retry's reads of its children and metrics (kube/replay.py says why), unless the
        attempt before wrote something (a child applied before a 409 on a delete's precondition)."""
        replay: ReplayReader | None = None
        writes = self.kube.writes.of_this_thread()
        for attempt in range(CONFLICT_RETRIES):
            wrote, writes = self.kube.writes.of_this_thread() != writes, self.kube.writes.of_this_thread()
            if attempt == 1 or (replay is not None and wrote):
                replay = ReplayReader(self.kube)  # an attempt that wrote something made its reads old
            try:
                return self._timed_pass(namespace, name, replay=replay)
            except Conflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                telemetry.ERRORS.labels(type="ConflictRetried").inc()
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _timed_pass(self, namespace: str, name: str, replay: ReplayReader | None = None) -> PassResult:
        began = time.perf_counter()
        before = self.kube.writes.of_this_thread()
        try:
            result = self.reconcile(namespace, name, replay=replay)
        except Exception as e:
            telemetry.RECONCILES.labels(result="error").inc()
            telemetry.ERRORS.labels(type=type(e).__name__).inc()
            raise
        finally:
            telemetry.RECONCILE_SECONDS.observe(time.perf_counter() - began)
        result.writes = self.kube.writes.of_this_thread() - before
        telemetry.RECONCILES.labels(result="changed" if result.writes else "unchanged").inc()
        telemetry.record_phase(namespace, name, result.phase)
        return result

    # --- the pass ----------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str, replay: ReplayReader | None = None) -> PassResult:
        """Decide, record the decision in status (with a precondition), then act on it.

        Status is written before any child changes: a pass that loses a race (409) has changed
        nothing and is retried on fresh state, and a recorded decision (a rollback, a step) is never
        undone by a later pass that did not see it. `replay` (the retries after a 409, whose cause may
        be a cache behind the cluster): the ModelDeployment is read from the API server, everything
        else through `replay`, which reads the API server once per pass.
        """
        result = PassResult()
        if not self.is_leader():
            return result  # a standby replica keeps its cache warm and writes nothing
        fresh = replay is not None
        reader: Reader = replay if replay is not None else self.reader
        md = (self.kube if fresh else self.reader).get_or_none(constants.KIND, namespace, name)
        if fresh and md is not None:
            self._remember(constants.KIND, md)  # later passes must not start from an older version
        if md is None or md["metadata"].get("deletionTimestamp"):
            return result  # children go with it through their ownerReferences
        meta = md["metadata"]
        generation = int(meta.get("generation", 0))
        previous = md.get("status") or {}
        now = _now()
        try:
            spec = api.parse_spec(md.get("spec") or {}, name=name)
        except api.SpecError as e:
            desired = status.invalid_spec_status(previous, generation, e.field, e.message, timefmt.rfc3339_at(now))
            result.phase = desired["phase"]
            if self._write_status(md, previous, desired):
                events.post(self.kube, md, "Warning", status.Reason.INVALID_SPEC, f"{e.field}: {e.message}")
            return result

        current = api.revision_hash(spec, images=image_inputs(spec, self.images()))
        selector = {constants.LABEL_NAME: name}
        deployments = [d for d in reader.list("Deployment", namespace, selector)
                       if ownership.controlled_by(d, meta["uid"])]
        pods = reader.list("Pod", namespace, selector)
        observed = observe.summarise(deployments, pods, now)
        desired_replicas = self.desired_replicas(spec, previous)
        stable = previous.get("stableRevision")
        holds = self._holds(md, spec)
        target = self._service_target(holds, desired_replicas, observed)
        build = (self.builder.observe(md, spec, current, previous, self.images(), now, pods=pods,
                                      models=self.known_models, fenced=lambda: self._build_fenced(reader, md))
                 if self.builder.enabled else None)
        planned = current
        if build is not None and not build.ready and not build.failed and stable and stable != current \
                and stable in observed:
            planned = stable  # the stable revision serves on, untouched, while the new one builds: no rollout yet
        switch_input = switch.SwitchInput(
            desired_replicas=desired_replicas, gpus_per_pod=spec.serving.gpus, strategy=spec.rollout.strategy,
            current=planned, stable=stable, failed=previous.get("failedRevision"),
            startup_timeout_seconds=spec.serving.startup_timeout_seconds,
            served=status.served_revisions(previous, observed), build_failure=build.failure if build else "")
        cplan = self._plan(md, spec, switch_input, observed, pods, replay)
        plan = cplan.plan
        if build is not None and build.new_result:
            (result.warnings if build.warning else result.decisions).append((build.reason, build.message))

        children = self._children(md, spec, current, plan, cplan, build, target)
        route, route_note = self._route(md, spec, cplan, observed)
        zero_note = ("autoscaling.minReplicas is 0 but this operator runs without the activator (chart "
                     "activator.enabled): the model keeps one pod") \
            if spec.autoscaling.scales_to_zero and self.link is None else ""
        if route is not None:
            children.append(route)
        live = {ownership.key(obj): reader.get_or_none(obj["kind"], namespace, obj["metadata"]["name"])
                for obj in children}
        conflicts = ownership.conflicts(children, live, meta["uid"])

        weight = cplan.decision.weight if cplan.decision else 0.0
        desired_status = status.compute(status.StatusInput(
            name=name, namespace=namespace, model_name=spec.model.name, generation=generation, current=current,
            desired_replicas=desired_replicas, plan=plan, observed=observed, previous=previous,
            now=timefmt.rfc3339_at(now), canary=cplan.state, canary_weight=weight,
            conflicts=tuple(conflicts.values()), notes=tuple(n for n in (route_note, zero_note) if n),
            build=build, model_version=spec.model.version, tune=spec.model.optimization.tune is not None,
            zero=self._zero_state(spec, holds, desired_replicas, target, previous)))
        told = set(previous.get("warnings") or ())
        desired_status["canary"] = canary.to_status(cplan.state, cplan.decision) if cplan.state else None
        result.phase = desired_status["phase"]
        # Conflict: nothing changed yet, the pass is retried on fresh state.
        written = self._write_status(md, previous, desired_status)
        version = written or meta.get("resourceVersion", "")
        if build is not None and build.new_result and build.reason != build_plan.Reason.WAITING:
            for waiter in self.builder.waiters_of(namespace, name):  # its record (or failure) is in status now
                self.wake(*waiter)
        if written is None and not fresh and self._children_change(children, live, conflicts, current, plan,
                                                                    observed):
            self._confirm_current(md)  # Conflict: the cache was behind; nothing written, retried fresh

        self._publish_route(md, spec, reader, holds, target, starting_pods(pods, plan.stable or current)
                            if target == zero.TARGET_ACTIVATOR else ())
        for obj in children:
            k = ownership.key(obj)
            if k in conflicts:
                if conflicts[k] not in told:  # one event when first seen, the condition meanwhile
                    result.warnings.append((status.Reason.OWNERSHIP_CONFLICT, conflicts[k]))
                continue
            self._apply_child(obj, live[k], spec, current, result)
        self._prune_endpointslices(md, reader, target, conflicts)
        if result.created:  # one Event for the Services, PDB and policies a pass created, not one each
            result.decisions.append(("Created", "created " + ", ".join(result.created)))
        self._scale_older(md, current, plan, observed, result)
        for rev in plan.retire:
            state = observed[rev]
            self.kube.delete("Deployment", namespace, state.deployment, uid=state.uid)
            result.decisions.append((switch.Reason.RETIRED, f"deleted Deployment {state.deployment} (revision {rev})"))
        if route_note and route_note not in told:
            result.warnings.append(("GatewayAPIUnavailable", route_note))
        if zero_note and zero_note not in told:
            result.warnings.append(("ScaleToZeroUnavailable", zero_note))

        self._consume_manual(md, cplan, version)
        if cplan.state is not None:
            telemetry.record_canary(namespace, name, cplan.state.phase, weight, cplan.state.step)
        notes = [("Warning" if reason == switch.Reason.FAILED else "Normal", reason, message)
                 for reason, message in (*plan.decisions, *result.decisions)]
        warnings = [("Warning", reason, message) for reason, message in result.warnings]
        for kind, reason, message in (*cplan.events, *notes, *warnings):
            events.post(self.kube, md, kind, reason, message)
            log.log(logging.WARNING if kind == "Warning" else logging.INFO, "%s/%s: %s: %s",
                    namespace, name, reason, message)
            if reason == canary.Reason.ANALYSIS:
                telemetry.CANARY_VERDICTS.labels(verdict=message.split(":")[1].strip()).inc()
            elif reason in (canary.Reason.PROMOTED, canary.Reason.ROLLED_BACK):
                telemetry.CANARY_OUTCOMES.labels(outcome=reason.removeprefix("Canary")).inc()
        return result

    # --- canary ------------------------------------------------------------------------------
    def _plan(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, switch_input: switch.SwitchInput,
              observed: Mapping[str, observe.RevisionState],
              pods: list[dict[str, Any]], replay: ReplayReader | None = None) -> canary_plan.CanaryPlan:
        """The switch's or the canary's plan; reads the pods' metrics only when an analysis needs them
        (once per pass: a retry after a 409 reuses them)."""
        previous = md.get("status") or {}
        state = canary.from_status(previous.get("canary"))
        now = time.time()
        inp = canary_plan.CanaryInput(switch=switch_input, rollout=spec.rollout, state=state, now=now,
                                      manual=manual_command(md["metadata"].get("annotations") or {}))
        if canary_plan.canary_applies(switch_input, observed):
            live = state if state is not None and state.revision == switch_input.current else None
            if live is None or canary_plan.needs_metrics(live, spec.rollout, now):
                model, namespace = spec.model.name, md["metadata"]["namespace"]

                def counters(revision: str) -> Counters | None:
                    def read() -> Counters | None:
                        return revision_counters(self.metrics, pods, revision, model, namespace)
                    return replay.once(("counters", revision), read) if replay is not None else read()
                inp = dataclasses.replace(inp, canary_counters=counters(switch_input.current),
                                          stable_counters=counters(switch_input.stable or ""))
            if spec.rollout.validation is not None and live is not None and live.phase == canary.Phase.VALIDATING:
                inp = dataclasses.replace(inp, validation=self.validator.result(md, spec, live.revision))
        cplan = canary_plan.plan(inp, observed)
        if cplan.run_validation and cplan.state is not None:
            self.validator.ensure_started(md, spec, cplan.state.revision, cplan.state.stable)
        return cplan

    def _consume_manual(self, md: Mapping[str, Any], cplan: canary_plan.CanaryPlan, version: str) -> None:
        """promote / abort are one-shot: once the canary acted on one, its annotation is removed."""
        meta = md["metadata"]
        annotations = meta.get("annotations") or {}
        acted = {constants.ANNOTATION_PROMOTE: (canary.Phase.PROMOTING, canary.Phase.PROMOTED),
                 constants.ANNOTATION_ABORT: (canary.Phase.ROLLING_BACK, canary.Phase.ROLLED_BACK)}
        for key, phases in acted.items():
            if key in annotations and cplan.state is not None and cplan.state.phase in phases:
                try:
                    self.kube.remove_annotation(constants.KIND, meta["namespace"], meta["name"], key,
                                                version)
                except (NotFound, Conflict):
                    return  # the next pass sees the newer object and tries again
                return

    def desired_replicas(self, spec: api.ModelDeploymentSpec, previous: Mapping[str, Any]) -> int:
        """spec.replicas is the truth unless the operator's autoscaler owns replicas; 0 only when the
        model scales to zero, the activator is on and the autoscaler took it there."""
        if spec.autoscaling.enabled:
            recommended = (previous.get("autoscaling") or {}).get("desiredReplicas")
            if recommended == 0 and self.link is not None and spec.autoscaling.scales_to_zero:
                return 0
            if isinstance(recommended, int):
                return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, recommended))
            return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, spec.replicas))
        return spec.replicas

    # --- scale to zero: the Service's target, the activator's route, the EndpointSlices ----------
    def _holds(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec) -> bool:
        """Whether the activator stands in for this model while it has no Ready pod (zero.holds_at_zero)."""
        if self.link is None:
            return False
        meta = md["metadata"]
        auto = spec.autoscaling
        routed = not auto.enabled and spec.replicas > 0 and self.link.has_route(meta["namespace"], meta["name"])
        return zero.holds_at_zero(auto, spec.replicas, routed)

    def _service_target(self, holds: bool, desired: int, observed: Mapping[str, observe.RevisionState]) -> str:
        if self.link is None or not holds:
            return zero.TARGET_PODS
        ready = sum(s.ready for s in observed.values())
        return zero.service_target(holds, desired, ready, len(self.link.addresses()))

    def _zero_state(self, spec: api.ModelDeploymentSpec, holds: bool, desired: int, target: str,
                    previous: Mapping[str, Any]) -> str:
        """"" (not at zero), "idle: why" (0 pods: the activator answers and wakes the model), "held:
        why" (0 pods by spec.replicas, owned outside the operator: the activator holds requests until
        it is raised) or "activating" (pods asked for, none Ready yet: the activator holds the
        requests); the why of "idle" comes from status.autoscaling."""
        if not holds:
            return ""
        if desired == 0 and spec.autoscaling.scales_to_zero:
            why = (previous.get("autoscaling") or {}).get("reason") or "no requests"
            return f"idle: {why}"
        if desired == 0:
            return ("held: spec.replicas is 0 (kubectl scale, an HPA or KEDA)" if target == zero.TARGET_ACTIVATOR
                    else "")
        return "activating" if target == zero.TARGET_ACTIVATOR else ""

    def _publish_route(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, reader: Reader, holds: bool,
                       target: str, pods: tuple[str, ...] = ()) -> None:
        """Every model the activator may stand in for has its route in the activator's table, with the ClusterIPs
        of its Services (read back from the cache: they exist once created) and, while the Service
        points at the activator, the addresses of its starting pods (the activator probes and
        forwards to them directly: no wait for kube-proxy once one is Ready). Raises when the route
        of a model about to point at the activator cannot be written: the Service is not switched."""
        if self.link is None:
            return
        meta = md["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if not holds:
            self.link.withdraw(ns, name)
            return
        main = reader.get_or_none("Service", ns, name) or {}
        stable = reader.get_or_none("Service", ns, labels.stable_service_name(name)) or {}
        ips = (main.get("spec") or {}).get("clusterIPs") or []
        route = activator_res.route_for(name, ns, spec.model.name, ips, (stable.get("spec") or {}).get("clusterIP"),
                                        pods, serving=target == zero.TARGET_PODS)

        def known() -> set[tuple[str, str]]:
            return {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in self.known_models()}
        try:
            self.link.publish(route, known)
        except Exception:
            if target == zero.TARGET_ACTIVATOR:
                raise  # no Service points at the activator before its route is there
            log.warning("%s/%s: activator route not written yet (the next pass tries again)", ns, name,
                        exc_info=True)

    def _prune_endpointslices(self, md: Mapping[str, Any], reader: Reader, target: str,
                              conflicts: Mapping[tuple[str, str], str]) -> None:
        """The EndpointSlices of `<name>` that must go: at zero the controller's (frozen with the old
        pods once the selector is gone), back at the pods ours, once the controller's lists a Ready
        pod (until then both serve: the activator forwards what reaches it)."""
        if self.link is None or (self.cache is not None and not self.cache.holds("EndpointSlice")):
            return
        meta = md["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if ("Service", name) in conflicts:
            return  # not our Service: not our slices either
        slices = reader.list("EndpointSlice", ns, {activator_res.LABEL_SERVICE_NAME: name})
        at_zero = target == zero.TARGET_ACTIVATOR
        if not at_zero and not activator_res.controller_slice_ready(slices, name):
            return
        doomed = activator_res.slices_to_delete(slices, name, at_zero)
        if at_zero and doomed:
            # The Endpoints `<name>` the endpoints controller left when the selector went: while it
            # exists the mirroring controller copies its (soon dead) pod addresses into a new slice
            # each time we delete one, and kube-proxy sends clients there (kubernetes#91072).
            with contextlib.suppress(NotFound):
                self.kube.delete("Endpoints", ns, name)
        for slice_name in doomed:
            with contextlib.suppress(NotFound):
                self.kube.delete("EndpointSlice", ns, slice_name)
            if self.cache is not None:
                self.cache.remove("EndpointSlice", {"metadata": {"namespace": ns, "name": slice_name}})

    def _children(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, current: str,
                  plan: switch.SwitchPlan, cplan: canary_plan.CanaryPlan,
                  build: build_plan.BuildState | None = None, target: str = zero.TARGET_PODS,
                  ) -> list[dict[str, Any]]:
        """Every child this pass wants as a whole object: the current revision's Deployment (when the
        plan runs it and, with an artifact store, once its artifact is recorded), the Services,
        the PodDisruptionBudget and, when configured, the NetworkPolicies (with an artifact store,
        also `<name>-build` for the build Jobs' pods).

        With the Service pointing at the activator (`target`), `<name>` has no selector and an
        EndpointSlice of the activator's Ready pods, and both come first: going to zero, the
        Service leaves the pods before their Deployment is scaled down."""
        meta = md["metadata"]
        out: list[dict[str, Any]] = []
        artifact = None
        if build is not None and build.artifact is not None:
            artifact = ArtifactFetch(key=str(build.artifact["key"]), store=self.builder.store(),
                                     cache_url=self.settings.artifact_cache_url)
        if current in plan.replicas and (build is None or artifact is not None):
            out.append(build_deployment(md_name=meta["name"], namespace=meta["namespace"], owner_uid=meta["uid"],
                                        spec=spec, revision=current, replicas=plan.replicas[current],
                                        images=self.images(), role="stable" if current == plan.stable else "canary",
                                        artifact=artifact))
        services = build_services(md_name=meta["name"], namespace=meta["namespace"], owner_uid=meta["uid"],
                                  stable_revision=plan.stable or current, canary_revision=current,
                                  main_revision=cplan.main_service_revision)
        if target == zero.TARGET_ACTIVATOR and self.link is not None:
            services = [activator_res.build_activator_service(meta["name"], meta["namespace"], meta["uid"]),
                        *services[1:],
                        *activator_res.build_activator_endpointslices(meta["name"], meta["namespace"], meta["uid"],
                                                                      self.link.addresses())]
            out = [*services, *out]
        else:
            out += services
        out.append(build_pdb(md_name=meta["name"], namespace=meta["namespace"], owner_uid=meta["uid"],
                             replicas=spec.replicas))
        out += networkpolicy.build_network_policies(meta["name"], meta["namespace"], meta["uid"], current,
                                                    self.network_policy, builds=self.builder.enabled)
        return out

    @staticmethod
    def _children_change(children: list[dict[str, Any]], live: Mapping[tuple[str, str], Any],
                         conflicts: Mapping[tuple[str, str], str], current: str, plan: switch.SwitchPlan,
                         observed: Mapping[str, observe.RevisionState]) -> bool:
        """Whether the pass is about to write any child (apply, scale or delete)."""
        if plan.retire:
            return True
        if any(rev != current and rev in observed and observed[rev].spec_replicas != n
               for rev, n in plan.replicas.items()):
            return True
        return any(ownership.key(o) not in conflicts and drift.needs_apply(o, live[ownership.key(o)])
                   for o in children)

    def _confirm_current(self, md: Mapping[str, Any]) -> None:
        """An empty status patch with the pass's resourceVersion as precondition: the API server
        refuses it (409) when the ModelDeployment changed since the cache delivered it, and changes
        nothing when it did not. So no child is ever written from a ModelDeployment that is not the
        newest, even when status had nothing to record. Costs one request, only when a child is
        about to change."""
        meta = md["metadata"]
        self.kube.patch_status(constants.KIND, meta["namespace"], meta["name"], {},
                               resource_version=meta.get("resourceVersion"))

    def _apply_child(self, desired: dict[str, Any], live: Mapping[str, Any] | None, spec: api.ModelDeploymentSpec,
                     current: str, result: PassResult) -> None:
        if not drift.needs_apply(desired, live):
            return
        self._remember(desired["kind"], self.kube.apply(desired))
        kind, obj_name = desired["kind"], desired["metadata"]["name"]
        if kind == "Deployment":
            verb, reason = ("created", switch.Reason.CREATED) if live is None else ("updated", switch.Reason.UPDATED)
            result.decisions.append((reason, f"{verb} Deployment {obj_name} (revision {current}, model version "
                                             f"{spec.model.version}, {desired['spec']['replicas']} replicas)"))
        elif kind == "HTTPRoute":
            weights = [b.get("weight") for r in desired["spec"].get("rules", []) for b in r.get("backendRefs", [])]
            result.decisions.append(("RouteUpdated", f"HTTPRoute {obj_name}: backend weights {weights}"))
        elif live is None:
            result.created.append(f"{kind} {obj_name}")

    def _scale_older(self, md: Mapping[str, Any], current: str, plan: switch.SwitchPlan,
                     observed: Mapping[str, observe.RevisionState], result: PassResult) -> None:
        """An older revision is only ever scaled: its pod template stays exactly as it was."""
        for rev, replicas in plan.replicas.items():
            if rev != current and rev in observed and observed[rev].spec_replicas != replicas:
                state = observed[rev]
                self.kube.scale("Deployment", md["metadata"]["namespace"], state.deployment, replicas)
                result.decisions.append((switch.Reason.SCALED,
                                         f"scaled revision {rev}: {state.spec_replicas} -> {replicas}"))

    def _route(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, cplan: canary_plan.CanaryPlan,
               observed: Mapping[str, observe.RevisionState]) -> tuple[dict[str, Any] | None, str]:
        """The HTTPRoute `<name>` when weighted routing is on and the API can be used, else a note
        saying why not (the API is not installed, or RBAC forbids it: two different fixes)."""
        if not spec.rollout.gateway_api.enabled:
            return None, ""
        meta = md["metadata"]
        now = time.monotonic()
        if self._route_api is None or now - self._route_api[1] > ROUTE_API_RECHECK_SECONDS:
            try:
                found = "installed" if self.kube.kind_installed("HTTPRoute", meta["namespace"]) else "missing"
            except Forbidden:
                found = "forbidden"
            self._route_api = (found, now)
        found = self._route_api[0]
        if found == "missing":
            return None, ("spec.rollout.trafficRouting.gatewayAPI is enabled but the HTTPRoute API is not "
                          "installed: traffic splits by pod count")
        if found == "forbidden":
            return None, (f"spec.rollout.trafficRouting.gatewayAPI is enabled but RBAC forbids the operator to "
                          f"use httproutes.gateway.networking.k8s.io in namespace {meta['namespace']}: grant its "
                          f"ServiceAccount the chart's httproutes rule; traffic splits by pod count meanwhile")
        state = cplan.state
        live = state is not None and state.phase not in canary.DONE
        step_weight = spec.rollout.steps[min(state.step, len(spec.rollout.steps) - 1)].weight if state else 0
        weight = 0
        if live and state is not None and not cplan.main_service_revision:
            can, stable = observed.get(state.revision), observed.get(state.stable)
            weight = route_weight(state.phase, step_weight, stable_ready=stable.ready if stable else 0,
                                  canary_ready=can.ready if can else 0)
        return build_httproute(meta["name"], meta["namespace"], meta["uid"], spec.rollout.gateway_api.parent_refs,
                               weight), ""

    def _write_status(self, md: Mapping[str, Any], previous: Mapping[str, Any], desired: Mapping[str, Any],
                      ) -> str | None:
        """Merge-patch status with the pass's resourceVersion as precondition (a 409 raises Conflict);
        returns the object's new resourceVersion, or None when nothing was written."""
        patch = status.status_patch(previous, desired)
        if not patch:
            return None
        meta = md["metadata"]
        log.debug("%s/%s: status patch %s", meta["namespace"], meta["name"], patch)
        try:
            written = self.kube.patch_status(constants.KIND, meta["namespace"], meta["name"], patch,
                                             resource_version=meta.get("resourceVersion"))
        except NotFound:
            return None
        self._remember(constants.KIND, written)
        return str((written or {}).get("metadata", {}).get("resourceVersion") or meta.get("resourceVersion", ""))
