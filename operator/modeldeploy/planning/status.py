"""The ModelDeployment's status from what was observed and decided (pure).

Conditions follow Kubernetes conventions: constant CamelCase reasons, a human message with the
numbers, and lastTransitionTime kept unless the condition's status really changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..constants import Condition, Phase
from ..rollout.canary import UNDER_WAY, CanaryState
from ..rollout.canary import Phase as CanaryPhase
from . import build as build_state
from . import tuning
from .build import BuildState
from .observe import RevisionState
from .rebuild import FIELD as REBUILDS
from .switch import SwitchPlan


class Reason:
    """Constant condition reasons (documented in docs/status.md)."""

    SERVING = "Serving"
    NO_READY_REPLICAS = "NoReadyReplicas"
    SCALED_TO_ZERO = "ScaledToZero"
    MODEL_LOADED = "ModelLoaded"
    LOADING = "Loading"
    LOAD_FAILED = "LoadFailed"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLOUT_FAILED = "RolloutFailed"
    AS_EXPECTED = "AsExpected"
    INSUFFICIENT_REPLICAS = "InsufficientReplicas"
    UNSCHEDULABLE = "Unschedulable"
    INVALID_SPEC = "InvalidSpec"
    CANARY_IN_PROGRESS = "CanaryInProgress"
    ROLLOUT_BLOCKED = "RolloutBlocked"
    OWNERSHIP_CONFLICT = "OwnershipConflict"
    ACTIVATING = "Activating"  # scaled from zero on demand: the activator holds requests until a pod is Ready


def canary_message(can: CanaryState, weight: float) -> str:
    """One line for the Progressing condition: where the canary is and why."""
    if can.phase == CanaryPhase.VALIDATING:
        return f"canary {can.revision}: validating before live traffic"
    if can.phase == CanaryPhase.PAUSED:
        return f"canary {can.revision}: paused at step {can.step + 1}, weight {weight:.0f}%"
    if can.phase == CanaryPhase.PROMOTING:
        return f"canary {can.revision}: promoting, weight {weight:.0f}%"
    if can.phase == CanaryPhase.ROLLING_BACK:
        return f"canary {can.revision}: rolling back: {can.reason}"
    last = can.analyses[-1]["reason"] if can.analyses else "no analysis yet"
    return f"canary {can.revision}: step {can.step + 1}, weight {weight:.0f}%, last analysis: {last}"


@dataclass(frozen=True)
class StatusInput:
    name: str
    namespace: str
    model_name: str
    generation: int
    current: str
    desired_replicas: int
    plan: SwitchPlan
    observed: Mapping[str, RevisionState]
    previous: Mapping[str, Any]
    now: str  # RFC 3339, used only for conditions whose status changes
    canary: CanaryState | None = None  # the canary of the current revision, if one runs or ran
    canary_weight: float = 0.0
    conflicts: tuple[str, ...] = ()  # children whose names are taken by objects the operator did not create
    notes: tuple[str, ...] = ()  # other things a user must fix (an optional API missing or forbidden)
    build: BuildState | None = None  # the current revision's build, when revisions are built (artifact store)
    model_version: str = ""  # spec.model.version: the current revision's entry before its Deployment exists
    tune: bool = False  # spec.model.optimization.tune is set: the Tuned condition (planning/tuning.py)
    # Scale to zero (autoscale/zero.py): "" not at zero; "idle: <why>" 0 pods, the activator answers;
    # "held: <why>" 0 pods by spec.replicas (owned outside the operator), the activator holds;
    # "activating" pods asked for, none Ready, the activator holds the requests.
    zero: str = ""


def served_revisions(previous: Mapping[str, Any], observed: Mapping[str, RevisionState]) -> frozenset[str]:
    """Revisions that have had a Ready pod: recorded in status.revisions[].served, or Ready now."""
    recorded = {r.get("revision") for r in previous.get("revisions") or () if r.get("served")}
    return frozenset(rev for rev, s in observed.items() if s.ready > 0 or rev in recorded)


def _condition(ctype: str, status: bool | None, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {"type": ctype, "status": "Unknown" if status is None else ("True" if status else "False"),
            "reason": reason, "message": message, "observedGeneration": generation}


def merge_conditions(previous: Sequence[Mapping[str, Any]], new: Sequence[dict[str, Any]],
                     now: str) -> list[dict[str, Any]]:
    """Keep lastTransitionTime for conditions whose status did not change."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond["type"])
        if old and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
            cond = {**cond, "lastTransitionTime": old["lastTransitionTime"]}
        else:
            cond = {**cond, "lastTransitionTime": now}
        out.append(cond)
    return out


def invalid_spec_status(previous: Mapping[str, Any], generation: int, field_path: str, message: str,
                        now: str) -> dict[str, Any]:
    """A spec the schema could not refuse but that can never work: say which field and why."""
    text = f"{field_path}: {message}"
    conds = [_condition(Condition.READY, False, Reason.INVALID_SPEC, text, generation),
             _condition(Condition.DEGRADED, True, Reason.INVALID_SPEC, text, generation)]
    return {**previous, "observedGeneration": generation, "phase": Phase.FAILED, "message": text,
            "conditions": merge_conditions(previous.get("conditions", []), conds, now)}


def compute(inp: StatusInput) -> dict[str, Any]:
    """The whole status, every condition derived here from the same facts, so they never disagree
    (tests/unit/test_status_table.py holds a table of every phase)."""
    plan, obs = inp.plan, inp.observed
    stable = plan.stable or inp.current
    cur = obs.get(inp.current)
    serving_revs = [s for rev, s in obs.items() if rev not in plan.retire]
    ready = sum(s.ready for s in serving_revs)
    replicas = sum(s.replicas for s in serving_revs)
    failed_now = plan.failed == inp.current
    rolling = stable != inp.current and not failed_now
    failed_message = (plan.failure or inp.previous.get("message", "")) if failed_now else ""
    unschedulable = next((s.unschedulable for s in serving_revs if s.unschedulable), "")
    # Trouble that may heal: the current revision's first (it decides the rollout), then the others'.
    troubled = next((s for s in sorted(serving_revs, key=lambda s: s.revision != inp.current) if s.trouble), None)
    r = inp.desired_replicas

    can = inp.canary if inp.canary is not None and inp.canary.revision == inp.current else None
    rolled_back = (can is not None and can.phase in (CanaryPhase.ROLLED_BACK, CanaryPhase.ROLLING_BACK)
                   and can.cause != Reason.LOAD_FAILED)
    failed_reason = can.cause if rolled_back and can is not None and can.cause else Reason.LOAD_FAILED
    build = inp.build
    if failed_now and build is not None and build.failed:
        failed_reason = build_state.Reason.BUILD_FAILED
    building = build is not None and not build.ready and not build.failed

    if failed_now:
        loaded = _condition(Condition.MODEL_LOADED, False, failed_reason,
                            f"revision {inp.current}: {failed_message}", inp.generation)
    elif cur is not None and cur.ready > 0:
        loaded = _condition(Condition.MODEL_LOADED, True, Reason.MODEL_LOADED,
                            f"revision {inp.current}: {cur.ready} pod(s) serving", inp.generation)
    elif building and build is not None:
        loaded = _condition(Condition.MODEL_LOADED, None, build.reason, build.message, inp.generation)
    elif cur is not None and cur.trouble:
        loaded = _condition(Condition.MODEL_LOADED, None, cur.trouble_reason,
                            f"revision {inp.current}: {cur.trouble}", inp.generation)
    else:
        loaded = _condition(Condition.MODEL_LOADED, None, Reason.LOADING,
                            f"revision {inp.current}: waiting for the model to load", inp.generation)

    idle = inp.zero.startswith("idle") and r == 0
    held = inp.zero.startswith("held") and r == 0
    if idle:
        ready_c = _condition(Condition.READY, False, Reason.SCALED_TO_ZERO,
                             f"scaled to zero ({inp.zero.removeprefix('idle: ')}); the activator answers "
                             f"the next request and brings a pod back", inp.generation)
    elif held:
        ready_c = _condition(Condition.READY, False, Reason.SCALED_TO_ZERO,
                             f"scaled to zero ({inp.zero.removeprefix('held: ')}); the activator holds requests "
                             f"until spec.replicas is raised", inp.generation)
    elif r == 0:
        ready_c = _condition(Condition.READY, False, Reason.SCALED_TO_ZERO, "replicas is 0", inp.generation)
    elif inp.zero == "activating" and ready == 0:
        ready_c = _condition(Condition.READY, False, Reason.ACTIVATING,
                             f"0/{r} replicas ready: requests wait in the activator", inp.generation)
    elif ready > 0:
        ready_c = _condition(Condition.READY, True, Reason.SERVING, f"{ready}/{r} replicas ready", inp.generation)
    else:
        why = f": {troubled.trouble}" if troubled else (f": {failed_message}" if failed_message else "")
        if not why and building and build is not None:
            why = f": {build.message}"
        ready_c = _condition(Condition.READY, False, Reason.NO_READY_REPLICAS, f"0/{r} replicas ready{why}",
                             inp.generation)

    live_canary = rolling and can is not None and can.phase in UNDER_WAY
    if live_canary and can is not None and can.waiting:
        progressing = _condition(Condition.PROGRESSING, False, Reason.ROLLOUT_BLOCKED,
                                 f"canary {can.revision}: {can.waiting}", inp.generation)
    elif live_canary and can is not None:
        extra = f"; canary pods: {cur.trouble}" if cur is not None and cur.trouble else ""
        progressing = _condition(Condition.PROGRESSING, True, Reason.CANARY_IN_PROGRESS,
                                 canary_message(can, inp.canary_weight) + extra, inp.generation)
    elif rolling:
        new_ready = cur.ready if cur else 0
        progressing = _condition(Condition.PROGRESSING, True, Reason.ROLLOUT_IN_PROGRESS,
                                 f"revision {stable} -> {inp.current}: {new_ready}/{r} new replicas ready",
                                 inp.generation)
    elif failed_now and stable != inp.current:
        verb = "was rolled back" if rolled_back else "failed"
        progressing = _condition(Condition.PROGRESSING, False, Reason.ROLLOUT_FAILED,
                                 f"revision {inp.current} {verb}: {failed_message}; revision {stable} keeps serving",
                                 inp.generation)
    elif failed_now:
        progressing = _condition(Condition.PROGRESSING, False, Reason.ROLLOUT_FAILED,
                                 f"revision {inp.current} cannot load: {failed_message}", inp.generation)
    elif r > 0 and (cur is None or cur.ready == 0):
        progressing = _condition(Condition.PROGRESSING, True, Reason.ROLLOUT_IN_PROGRESS,
                                 f"revision {inp.current}: 0/{r} replicas ready", inp.generation)
    else:
        progressing = _condition(Condition.PROGRESSING, False, Reason.ROLLOUT_COMPLETE,
                                 f"revision {stable} serves", inp.generation)

    if failed_now:
        degraded = _condition(Condition.DEGRADED, True, failed_reason, failed_message, inp.generation)
    elif inp.conflicts:
        degraded = _condition(Condition.DEGRADED, True, Reason.OWNERSHIP_CONFLICT, "; ".join(inp.conflicts),
                              inp.generation)
    elif unschedulable:
        degraded = _condition(Condition.DEGRADED, True, Reason.UNSCHEDULABLE, unschedulable, inp.generation)
    elif not rolling and r > 0 and ready < r and troubled is not None:
        degraded = _condition(Condition.DEGRADED, True, troubled.trouble_reason,
                              f"{ready}/{r} replicas ready: {troubled.trouble}", inp.generation)
    elif not rolling and r > 0 and ready < r and ready > 0:
        degraded = _condition(Condition.DEGRADED, True, Reason.INSUFFICIENT_REPLICAS,
                              f"{ready}/{r} replicas ready", inp.generation)
    else:
        degraded = _condition(Condition.DEGRADED, False, Reason.AS_EXPECTED, "", inp.generation)

    if failed_now and ready == 0:
        phase = Phase.FAILED
    elif rolling:
        phase = Phase.PROGRESSING
    elif idle or held:
        phase = Phase.SCALED_TO_ZERO
    elif ready == 0:
        phase = Phase.PENDING if (r == 0 or unschedulable) else Phase.LOADING
    elif degraded["status"] == "True":
        phase = Phase.DEGRADED
    else:
        phase = Phase.READY

    served = served_revisions(inp.previous, obs)
    revisions = [
        {"name": s.deployment, "revision": s.revision, "replicas": s.replicas, "readyReplicas": s.ready,
         "modelVersion": s.model_version, **({"served": True} if s.revision in served else {})}
        for s in sorted(obs.values(), key=lambda s: s.revision) if s.revision not in plan.retire
    ]
    if build is not None:
        revisions = _with_builds(revisions, inp, build)
    svc = f"{inp.name}.{inp.namespace}.svc"
    message = failed_message or (degraded["message"] if degraded["status"] == "True" else "")
    status: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": ready,
        "readyText": f"{ready}/{r}",
        "selector": f"modeldeploy.io/name={inp.name}",
        "stableRevision": stable,
        "canaryRevision": inp.current if rolling else None,
        "failedRevision": plan.failed,
        "revisions": revisions,
        "endpoint": {"http": f"http://{svc}:8000/v2/models/{inp.model_name}", "grpc": f"{svc}:8001"},
        "message": message,
        "warnings": [*inp.conflicts, *inp.notes] or None,
    }
    conds = [ready_c, loaded, progressing, degraded]
    if build is not None:
        conds.append(_condition(build_state.CONDITION, build.condition_status(), build.reason, build.message,
                                inp.generation))
    if (tuned := tuning.condition(inp.tune, build, inp.current)) is not None:
        conds.append(_condition(tuning.CONDITION, *tuned, inp.generation))
    status["conditions"] = merge_conditions(inp.previous.get("conditions", []), conds, inp.now)
    return status


def _with_builds(revisions: list[dict[str, Any]], inp: StatusInput, build: BuildState) -> list[dict[str, Any]]:
    """status.revisions[] with each revision's build: artifacts recorded earlier are kept (the Job
    that made them may be gone), the current revision's is set, and the current revision is listed
    before its Deployment exists (while it builds, or when its build failed)."""
    before = {r.get("revision"): r for r in inp.previous.get("revisions") or ()}
    out = []
    for entry in revisions:
        old = before.get(entry["revision"]) or {}
        if entry["revision"] == inp.current:
            entry = _build_fields(entry, build)
        else:
            entry = {**entry, **{k: old[k] for k in ("artifact", REBUILDS) if k in old}}
        out.append(entry)
    if not any(e["revision"] == inp.current for e in out):
        entry = {"name": f"{inp.name}-{inp.current}", "revision": inp.current, "replicas": 0, "readyReplicas": 0,
                 "modelVersion": inp.model_version}
        out = sorted([*out, _build_fields(entry, build)], key=lambda e: e["revision"])
    return out


def _build_fields(entry: dict[str, Any], build: BuildState) -> dict[str, Any]:
    if build.rebuilds:
        entry = {**entry, REBUILDS: build.rebuilds}
    if build.artifact is not None:
        return {**entry, "artifact": dict(build.artifact)}
    if build.failed:
        return {**entry, "buildFailure": build.failure}
    return entry


def status_patch(previous: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning `previous` into `desired` (empty when nothing changed).

    At the top level, keys other writers own (status.autoscaling) are left alone; inside an object
    the operator owns whole (status.canary), keys it no longer sets become None and are removed.
    """
    return _merge_patch(previous, desired, remove_missing=False)


def _merge_patch(previous: Mapping[str, Any], desired: Mapping[str, Any], *, remove_missing: bool) -> dict[str, Any]:
    patch: dict[str, Any] = {k: None for k in previous if k not in desired} if remove_missing else {}
    for key, value in desired.items():
        before = previous.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = _merge_patch(before, value, remove_missing=True)
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    return patch
