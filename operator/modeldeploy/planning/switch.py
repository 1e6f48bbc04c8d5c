"""How many pods each revision gets outside a canary (pure): the plain switch.

It serves the first revision, runs `Recreate` (the one strategy that chooses downtime: every old
pod goes before a new one starts), and keeps a revision recorded as failed stopped while the
stable one serves. A new revision under `strategy: Canary` is the canary's (planning/canary_plan.py);
the replica math of every strategy that runs two revisions at once is in rollout/replicas.py.
"""

from __future__ import annotations

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
    strategy: str  # Canary | Recreate
    current: str  # revision of the spec as it is now
    stable: str | None  # revision recorded in status as serving
    failed: str | None  # revision recorded in status as unable to load
    startup_timeout_seconds: float
    served: frozenset[str] = frozenset()  # revisions that have had a Ready pod (status.revisions[].served)
    build_failure: str = ""  # the current revision's build failed for good (planning/build.py): it never runs


@dataclass(frozen=True)
class SwitchPlan:
    replicas: dict[str, int]  # revision -> Deployment replicas (revisions to keep or create)
    retire: tuple[str, ...] = ()  # revisions whose Deployments are deleted
    stable: str | None = None
    failed: str | None = None
    failure: str = ""  # why `failed` cannot load (new this pass or still true)
    promoted: bool = False  # the stable revision changed in this pass
    decisions: tuple[tuple[str, str], ...] = field(default=())  # (event reason, message), one event each


def revision_failure(state: RevisionState | None, startup_timeout: float, served: bool = False) -> str:
    """Why a revision can never serve, '' if it can or may still.

    Only failures that retrying cannot fix count (the loader's checksum, format, conversion and gate
    errors, Triton refusing the model, a crash loop with no pod ever Ready); a revision with a Ready
    pod evidently loads, and one that has served (`served`) is never failed for crashing pods or a
    slow start: that is trouble to retry. The startup timeout counts from the serving container's
    start, so image pulls and the loader's time do not count against it.
    """
    if state is None or state.ready > 0:
        return ""
    if state.load_failure and not (served and state.crash_loop):
        return state.load_failure
    if served:
        return ""
    if state.oldest_starting_seconds > startup_timeout and not state.unschedulable:
        return f"triton: not ready within the startup timeout ({startup_timeout:.0f}s after it started)"
    return ""


def plan(inp: SwitchInput, observed: Mapping[str, RevisionState]) -> SwitchPlan:
    r = max(0, inp.desired_replicas)
    others = tuple(sorted(rev for rev in observed if rev not in (inp.current, inp.stable)))
    cur_state = observed.get(inp.current)

    # First revision, or the recorded stable one is gone: serve the current spec directly.
    if inp.stable is None or inp.stable == inp.current or inp.stable not in observed:
        failure = inp.build_failure or revision_failure(cur_state, inp.startup_timeout_seconds,
                                                        inp.current in inp.served)
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
    failure = inp.build_failure or revision_failure(cur_state, inp.startup_timeout_seconds, inp.current in inp.served)
    if inp.failed == inp.current or failure or inp.strategy != "Recreate":
        if failure and inp.failed != inp.current:
            decisions.append((Reason.FAILED, f"revision {inp.current} failed to load ({failure}); "
                                             f"revision {inp.stable} keeps serving"))
        return SwitchPlan(replicas={inp.stable: r, inp.current: 0}, retire=retire, stable=inp.stable,
                          failed=inp.current if (failure or inp.failed == inp.current) else None,
                          failure=failure or "", decisions=tuple(decisions))

    # Recreate: every old pod goes before the new revision starts (the user chose the gap).
    new_ready = cur_state.ready if cur_state else 0
    if stable_state.replicas > 0 or stable_state.spec_replicas > 0:
        return SwitchPlan(replicas={inp.stable: 0, inp.current: 0}, retire=retire, stable=inp.stable,
                          decisions=tuple(decisions))
    if new_ready >= r:
        decisions.append((Reason.PROMOTED, f"revision {inp.current} serves all {r} replicas: promoted, "
                                           f"revision {inp.stable} retired"))
        return SwitchPlan(replicas={inp.current: r}, retire=(*retire, inp.stable), stable=inp.current,
                          promoted=True, decisions=tuple(decisions))
    return SwitchPlan(replicas={inp.current: r}, retire=retire, stable=inp.stable, decisions=tuple(decisions))
