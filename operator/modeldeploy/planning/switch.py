"""How many pods each revision gets while the model changes (pure).

The plain switch: it serves the first revision, runs `Recreate`, and keeps a revision recorded
as failed stopped while the stable one serves. (With `strategy: Canary` the operator hands a new
revision to planning/canary_plan.py instead; `plan()` still answers a Canary switch by trading
pods within the GPU budget, the replacement `trade()` the canary's promotion also uses.) A new
revision is scaled up within `maxSurgeGpus`, the stable revision only gives up pods the new one
has made Ready, and the switch is final once the new revision serves every replica.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .observe import RevisionState


class Reason:
    """Event reasons of the switch's decisions."""

    PROMOTED = "RevisionPromoted"
    RETIRED = "RevisionRetired"
    FAILED = "RevisionFailed"
    SCALED = "RevisionScaled"
    CREATED = "RevisionCreated"
    UPDATED = "RevisionUpdated"


@dataclass(frozen=True)
class SwitchInput:
    desired_replicas: int
    gpus_per_pod: int
    max_surge_gpus: int
    strategy: str  # Canary | Recreate
    current: str  # revision of the spec as it is now
    stable: str | None  # revision recorded in status as serving
    failed: str | None  # revision recorded in status as unable to load
    startup_timeout_seconds: float


@dataclass(frozen=True)
class SwitchPlan:
    replicas: dict[str, int]  # revision -> Deployment replicas (revisions to keep or create)
    retire: tuple[str, ...] = ()  # revisions whose Deployments are deleted
    stable: str | None = None
    failed: str | None = None
    failure: str = ""  # why `failed` cannot load (new this pass or still true)
    promoted: bool = False  # the stable revision changed in this pass
    decisions: tuple[tuple[str, str], ...] = field(default=())  # (event reason, message), one event each


def surge_pods(desired: int, gpus_per_pod: int, max_surge_gpus: int) -> int:
    """Extra pods a switch may run: GPU pods by budget; CPU pods cost no GPUs, so 25% (at least 1)."""
    if gpus_per_pod <= 0:
        return max(1, math.ceil(desired / 4))
    return max_surge_gpus // gpus_per_pod


def trade(desired: int, surge: int, old_spec: int, new_spec: int, new_ready: int) -> tuple[int, int]:
    """(old, new) replicas for one pass of a replacement: the new revision grows into the surge
    budget, the old one gives up only pods the new one has made Ready (one pod when there is no
    budget at all, so the replacement can start)."""
    max_unavailable = 0 if surge > 0 else 1
    new_target = max(new_spec, min(desired, desired + surge - old_spec))
    old_target = min(old_spec, max(0, desired - max_unavailable - new_ready))
    return old_target, new_target


def revision_failure(state: RevisionState | None, startup_timeout: float) -> str:
    """Why a revision cannot serve, '' if it can or may still."""
    if state is None:
        return ""
    if state.load_failure:
        return state.load_failure
    if state.ready == 0 and state.oldest_unready_seconds > startup_timeout and not state.unschedulable:
        return f"triton: not ready within the startup timeout ({startup_timeout:.0f}s)"
    return ""


def plan(inp: SwitchInput, observed: Mapping[str, RevisionState]) -> SwitchPlan:
    r = max(0, inp.desired_replicas)
    others = tuple(sorted(rev for rev in observed if rev not in (inp.current, inp.stable)))
    cur_state = observed.get(inp.current)

    # First revision, or the recorded stable one is gone: serve the current spec directly.
    if inp.stable is None or inp.stable == inp.current or inp.stable not in observed:
        failure = revision_failure(cur_state, inp.startup_timeout_seconds)
        promoted = inp.stable != inp.current
        decisions = ((Reason.PROMOTED, f"revision {inp.current} is now the stable revision"),) \
            if promoted and inp.stable else ()
        return SwitchPlan(replicas={inp.current: r}, retire=others, stable=inp.current,
                          failed=inp.current if failure else None, failure=failure,
                          promoted=promoted, decisions=decisions)

    stable_state = observed[inp.stable]
    retire = others
    decisions: list[tuple[str, str]] = [(Reason.RETIRED, f"retiring intermediate revision {o}") for o in others]

    # A revision already known to fail stays stopped until the spec changes again.
    failure = revision_failure(cur_state, inp.startup_timeout_seconds)
    if inp.failed == inp.current or failure:
        if failure and inp.failed != inp.current:
            decisions.append((Reason.FAILED, f"revision {inp.current} failed to load ({failure}); "
                                             f"revision {inp.stable} keeps serving"))
        return SwitchPlan(replicas={inp.stable: r, inp.current: 0}, retire=retire, stable=inp.stable,
                          failed=inp.current, failure=failure or "", decisions=tuple(decisions))

    old = stable_state.spec_replicas
    new = cur_state.spec_replicas if cur_state else 0
    new_ready = cur_state.ready if cur_state else 0

    if inp.strategy == "Recreate":
        if stable_state.replicas > 0 or old > 0:
            return SwitchPlan(replicas={inp.stable: 0, inp.current: 0}, retire=retire, stable=inp.stable,
                              decisions=tuple(decisions))
        targets = {inp.current: r}
    else:
        old_target, new_target = trade(r, surge_pods(r, inp.gpus_per_pod, inp.max_surge_gpus), old, new, new_ready)
        targets = {inp.stable: old_target, inp.current: new_target}

    if new_ready >= r:
        decisions.append((Reason.PROMOTED, f"revision {inp.current} serves all {r} replicas: promoted, "
                                           f"revision {inp.stable} retired"))
        return SwitchPlan(replicas={inp.current: r}, retire=(*retire, inp.stable), stable=inp.current,
                          promoted=True, decisions=tuple(decisions))
    return SwitchPlan(replicas=targets, retire=retire, stable=inp.stable, decisions=tuple(decisions))
