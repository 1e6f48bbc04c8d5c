"""One reconcile pass: read the world, decide (pure planning/ and resources/), write the difference.

Level-based: every pass computes the whole desired state from the spec and what is observed, so
a restarted operator, a missed event or a user's edit all converge the same way. The canary's
and the switch's state live in status, never in the operator's memory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api, constants, telemetry
from .config import Settings
from .kube import events
from .kube.client import Conflict, Kube, NotFound
from .metrics.source import MetricsSource, source_from_settings
from .planning import canary_plan, drift, observe, status, switch
from .resources import Images, build_deployment, build_pdb, build_services, image_inputs
from .resources.httproute import build_httproute
from .rollout import canary
from .rollout.analysis import Counters
from .rollout.traffic import route_weight
from .validation import Validator

log = logging.getLogger(__name__)

ROUTE_API_RECHECK_SECONDS = 60.0  # how long "is the Gateway API installed" is trusted


@dataclass
class PassResult:
    """What one pass did (for logs, metrics and tests)."""

    writes: int = 0
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (event reason, message)
    phase: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """One revision's request counters over its ready pods (each pod's and the sum); None if any
    of them cannot be read.

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
                             for name, m in scraped.items() if m is not None})


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Only objects whose controller is this ModelDeployment are ours to change or delete."""
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences", []))


class Reconciler:
    """Drives ModelDeployments toward their spec; safe to call from several threads."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self._guard = threading.Lock()
        self._state: dict[tuple[str, str], str] = {}  # key -> "running" | "pending"
        self.metrics: MetricsSource = source_from_settings(settings)
        self.validator = Validator(kube, settings)
        self._route_api: tuple[bool, float] | None = None  # (HTTPRoute API installed, when checked)
        self._route_warned: set[str] = set()

    def images(self) -> Images:
        return Images(serving=self.settings.serving_image, loader=self.settings.loader_image,
                      converter=self.settings.converter_image, pull_policy=self.settings.image_pull_policy,
                      serving_backend=self.settings.serving_backend)

    # --- coalescing: bursts of events for one object become one or two passes -------------------
    def request(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._guard:
            if key in self._state:
                self._state[key] = "pending"
                return
            self._state[key] = "running"
        try:
            while True:
                self._timed_pass(namespace, name)
                with self._guard:
                    if self._state.get(key) == "pending":
                        self._state[key] = "running"
                        continue
                    del self._state[key]
                    return
        except BaseException:
            with self._guard:
                self._state.pop(key, None)
            raise

    def _timed_pass(self, namespace: str, name: str) -> PassResult:
        began = time.perf_counter()
        before = sum(self.kube.writes.by_verb.values())
        try:
            result = self.reconcile(namespace, name)
        except Exception as e:
            telemetry.RECONCILES.labels(result="error").inc()
            telemetry.ERRORS.labels(type=type(e).__name__).inc()
            raise
        finally:
            telemetry.RECONCILE_SECONDS.observe(time.perf_counter() - began)
        result.writes = sum(self.kube.writes.by_verb.values()) - before
        telemetry.RECONCILES.labels(result="changed" if result.writes else "unchanged").inc()
        telemetry.record_phase(namespace, name, result.phase)
        return result

    # --- the pass ----------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> PassResult:
        result = PassResult()
        md = self.kube.get_or_none(constants.KIND, namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return result  # children go with it through their ownerReferences
        meta = md["metadata"]
        generation = int(meta.get("generation", 0))
        previous = md.get("status") or {}
        now = _now()
        try:
            spec = api.parse_spec(md.get("spec") or {}, name=name)
        except api.SpecError as e:
            desired = status.invalid_spec_status(previous, generation, e.field, e.message, _rfc3339(now))
            result.phase = desired["phase"]
            if self._write_status(md, previous, desired):
                events.post(self.kube, md, "Warning", status.Reason.INVALID_SPEC, f"{e.field}: {e.message}")
            return result

        current = api.revision_hash(spec, images=image_inputs(spec, self.images()))
        selector = {constants.LABEL_NAME: name}
        deployments = [d for d in self.kube.list("Deployment", namespace, selector) if owned_by(d, meta["uid"])]
        pods = self.kube.list("Pod", namespace, selector)
        observed = observe.summarise(deployments, pods, now)
        desired_replicas = self.desired_replicas(spec, previous)
        switch_input = switch.SwitchInput(
            desired_replicas=desired_replicas, gpus_per_pod=spec.serving.gpus,
            max_surge_gpus=spec.rollout.max_surge_gpus, strategy=spec.rollout.strategy, current=current,
            stable=previous.get("stableRevision"), failed=previous.get("failedRevision"),
            startup_timeout_seconds=spec.serving.startup_timeout_seconds)
        cplan = self._plan(md, spec, switch_input, observed, pods)
        plan = cplan.plan

        self._apply_revisions(md, spec, current, plan, observed, result)
        self._apply_services(md, spec, plan.stable or current, current, result, cplan.main_service_revision)
        if spec.rollout.gateway_api.enabled:
            self._apply_route(md, spec, cplan, result)
        for rev in plan.retire:
            state = observed[rev]
            self.kube.delete("Deployment", namespace, state.deployment, uid=state.uid)
            result.decisions.append((switch.Reason.RETIRED, f"deleted Deployment {state.deployment} (revision {rev})"))

        weight = cplan.decision.weight if cplan.decision else 0.0
        desired_status = status.compute(status.StatusInput(
            name=name, namespace=namespace, model_name=spec.model.name, generation=generation, current=current,
            desired_replicas=desired_replicas, plan=plan, observed=observed, previous=previous,
            now=_rfc3339(now), canary=cplan.state, canary_weight=weight))
        desired_status["canary"] = canary.to_status(cplan.state, cplan.decision) if cplan.state else None
        result.phase = desired_status["phase"]
        self._write_status(md, previous, desired_status)
        self._consume_manual(md, cplan)
        if cplan.state is not None:
            telemetry.record_canary(namespace, name, cplan.state.phase, weight, cplan.state.step)
        notes = [("Warning" if reason == switch.Reason.FAILED else "Normal", reason, message)
                 for reason, message in (*plan.decisions, *result.decisions)]
        for kind, reason, message in (*cplan.events, *notes):
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
              pods: list[dict[str, Any]]) -> canary_plan.CanaryPlan:
        """The switch's or the canary's plan; reads the pods' metrics only when an analysis needs them."""
        previous = md.get("status") or {}
        state = canary.from_status(previous.get("canary"))
        now = time.time()
        inp = canary_plan.CanaryInput(switch=switch_input, rollout=spec.rollout, state=state, now=now,
                                      manual=manual_command(md["metadata"].get("annotations") or {}))
        if canary_plan.canary_applies(switch_input, observed):
            live = state if state is not None and state.revision == switch_input.current else None
            if live is None or canary_plan.needs_metrics(live, spec.rollout, now):
                model = spec.model.name
                inp = dataclasses.replace(
                    inp, canary_counters=revision_counters(self.metrics, pods, switch_input.current, model,
                                                           md["metadata"]["namespace"]),
                    stable_counters=revision_counters(self.metrics, pods, switch_input.stable or "", model,
                                                      md["metadata"]["namespace"]))
            if spec.rollout.validation is not None and live is not None and live.phase == canary.Phase.VALIDATING:
                inp = dataclasses.replace(inp, validation=self.validator.result(md, spec, live.revision))
        cplan = canary_plan.plan(inp, observed)
        if cplan.run_validation and cplan.state is not None:
            self.validator.ensure_started(md, spec, cplan.state.revision, cplan.state.stable)
        return cplan

    def _consume_manual(self, md: Mapping[str, Any], cplan: canary_plan.CanaryPlan) -> None:
        """promote / abort are one-shot: once the canary acted on one, its annotation is removed."""
        meta = md["metadata"]
        annotations = meta.get("annotations") or {}
        acted = {constants.ANNOTATION_PROMOTE: (canary.Phase.PROMOTING, canary.Phase.PROMOTED),
                 constants.ANNOTATION_ABORT: (canary.Phase.ROLLING_BACK, canary.Phase.ROLLED_BACK)}
        for key, phases in acted.items():
            if key in annotations and cplan.state is not None and cplan.state.phase in phases:
                try:
                    self.kube.remove_annotation(constants.KIND, meta["namespace"], meta["name"], key,
                                                meta["resourceVersion"])
                except (NotFound, Conflict):
                    return  # the next pass sees the newer object and tries again
                return

    def desired_replicas(self, spec: api.ModelDeploymentSpec, previous: Mapping[str, Any]) -> int:
        """spec.replicas is the truth unless the operator's autoscaler owns replicas."""
        if spec.autoscaling.enabled:
            recommended = (previous.get("autoscaling") or {}).get("desiredReplicas")
            if isinstance(recommended, int):
                return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, recommended))
            return max(spec.autoscaling.min_replicas, min(spec.autoscaling.max_replicas, spec.replicas))
        return spec.replicas

    def _apply_revisions(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, current: str,
                         plan: switch.SwitchPlan, observed: Mapping[str, observe.RevisionState],
                         result: PassResult) -> None:
        meta = md["metadata"]
        for rev, replicas in plan.replicas.items():
            if rev == current:
                desired = build_deployment(md_name=meta["name"], namespace=meta["namespace"],
                                           owner_uid=meta["uid"], spec=spec, revision=rev, replicas=replicas,
                                           images=self.images(), role="stable" if rev == plan.stable else "canary")
                live = self.kube.get_or_none("Deployment", meta["namespace"], desired["metadata"]["name"])
                if drift.needs_apply(desired, live):
                    self.kube.apply(desired)
                    verb, reason = ("created", switch.Reason.CREATED) if live is None else \
                        ("updated", switch.Reason.UPDATED)
                    result.decisions.append((reason, f"{verb} Deployment {desired['metadata']['name']} "
                                                     f"(revision {rev}, model version {spec.model.version}, "
                                                     f"{replicas} replicas)"))
            elif rev in observed and observed[rev].spec_replicas != replicas:
                # An older revision is only ever scaled: its pod template stays exactly as it was.
                state = observed[rev]
                self.kube.scale("Deployment", meta["namespace"], state.deployment, replicas)
                result.decisions.append((switch.Reason.SCALED,
                                         f"scaled revision {rev}: {state.spec_replicas} -> {replicas}"))

    def _apply_services(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, stable: str, current: str,
                        result: PassResult, main_revision: str | None = None) -> None:
        meta = md["metadata"]
        wanted = [*build_services(md_name=meta["name"], namespace=meta["namespace"], owner_uid=meta["uid"],
                                  stable_revision=stable, canary_revision=current, main_revision=main_revision),
                  build_pdb(md_name=meta["name"], namespace=meta["namespace"], owner_uid=meta["uid"],
                            replicas=spec.replicas)]
        for obj in wanted:
            live = self.kube.get_or_none(obj["kind"], meta["namespace"], obj["metadata"]["name"])
            if drift.needs_apply(obj, live):
                self.kube.apply(obj)
                if live is None:
                    result.decisions.append(("Created", f"created {obj['kind']} {obj['metadata']['name']}"))

    def _apply_route(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, cplan: canary_plan.CanaryPlan,
                     result: PassResult) -> None:
        """The HTTPRoute `<name>` with the canary's weight, when the Gateway API is installed."""
        meta = md["metadata"]
        now = time.monotonic()
        if self._route_api is None or now - self._route_api[1] > ROUTE_API_RECHECK_SECONDS:
            self._route_api = (self.kube.kind_installed("HTTPRoute"), now)
        if not self._route_api[0]:
            if meta["uid"] not in self._route_warned:  # once per object and operator run, not every pass
                self._route_warned.add(meta["uid"])
                result.decisions.append(("GatewayAPIMissing", "spec.rollout.trafficRouting.gatewayAPI is enabled "
                                         "but the HTTPRoute API is not installed: traffic splits by pod count"))
            return
        state = cplan.state
        live = state is not None and state.phase not in canary.DONE
        step_weight = spec.rollout.steps[min(state.step, len(spec.rollout.steps) - 1)].weight if state else 0
        weight = 0 if not live or cplan.main_service_revision else route_weight(state.phase if state else None,
                                                                                 step_weight)
        desired = build_httproute(meta["name"], meta["namespace"], meta["uid"], spec.rollout.gateway_api.parent_refs,
                                  weight)
        live_route = self.kube.get_or_none("HTTPRoute", meta["namespace"], meta["name"])
        if drift.needs_apply(desired, live_route):
            self.kube.apply(desired)
            result.decisions.append(("RouteUpdated", f"HTTPRoute {meta['name']}: canary weight {weight}%"))

    def _write_status(self, md: Mapping[str, Any], previous: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
        patch = status.status_patch(previous, desired)
        if not patch:
            return False
        meta = md["metadata"]
        log.debug("%s/%s: status patch %s", meta["namespace"], meta["name"], patch)
        try:
            self.kube.patch_status(constants.KIND, meta["namespace"], meta["name"], patch,
                                   resource_version=meta.get("resourceVersion"))
        except NotFound:
            return False
        return True
