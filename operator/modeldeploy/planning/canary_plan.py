"""A canary rollout as a SwitchPlan: the state machine's decision in the reconciler's terms (pure).

With `strategy: Canary`, once a stable revision serves and the spec asks for another one, the
canary state machine (rollout/canary.py) decides the replicas of both revisions, whether the
main Service may send live traffic to the canary yet, and when the new revision becomes stable or
is rolled back. Everything else (first deployment, Recreate, a revision already rolled back) is
the plain switch's job. The state comes from and goes back to status.canary, so a restarted
operator continues exactly where it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..api import RolloutSpec
from ..rollout import canary
from ..rollout.analysis import Counters
from ..rollout.canary import CanaryState, Decision, Phase
from . import switch
from .observe import RevisionState

Event = tuple[str, str, str]  # (Normal | Warning, reason, message)


@dataclass(frozen=True)
class CanaryInput:
    switch: switch.SwitchInput
    rollout: RolloutSpec
    state: CanaryState | None  # as read back from status.canary
    now: float
    canary_counters: Counters | None = None  # None: not read this pass, or could not be read
    stable_counters: Counters | None = None
    validation: tuple[bool, str] | None = None  # (passed, message) once the validation gate ran
    manual: str | None = None  # canary.Manual.*, from the annotations


@dataclass(frozen=True)
class CanaryPlan:
    plan: switch.SwitchPlan
    state: CanaryState | None  # what status.canary becomes (None: remove it)
    decision: Decision | None = None  # None when the state machine did not run this pass
    events: tuple[Event, ...] = ()
    main_service_revision: str | None = None  # set: the main Service selects only this revision
    run_validation: bool = False


def canary_applies(inp: switch.SwitchInput, observed: Mapping[str, RevisionState]) -> bool:
    """A canary runs when a stable revision serves and the spec asks for another, not yet failed, one."""
    return (inp.strategy == "Canary" and inp.stable is not None and inp.stable != inp.current
            and inp.stable in observed and inp.failed != inp.current and not inp.build_failure)


def needs_metrics(state: CanaryState | None, rollout: RolloutSpec, now: float) -> bool:
    """Whether this pass reads the pods' metrics: every pass while a step runs, as a window that
    already fails is judged before its interval is over (see rollout/canary._fails_early)."""
    return state is not None and state.phase == Phase.PROGRESSING


def plan(inp: CanaryInput, observed: Mapping[str, RevisionState]) -> CanaryPlan:
    sw = inp.switch
    if not canary_applies(sw, observed):
        return _not_canarying(inp, observed)

    events: list[Event] = []
    state = inp.state
    if state is None or state.revision != sw.current or state.phase in canary.DONE:
        if state is not None and state.phase in (*canary.LIVE, Phase.PAUSED):
            events.append(("Normal", canary.Reason.STARTED,
                           f"spec changed during the canary of revision {state.revision}: starting over "
                           f"with revision {sw.current}"))
        state = canary.start(sw.current, sw.stable or "", inp.rollout, inp.now)
        events.append(("Normal", canary.Reason.STARTED,
                       f"canary of revision {sw.current} started against revision {sw.stable} "
                       f"({len(inp.rollout.steps)} steps"
                       f"{', validation first' if inp.rollout.validation else ''})"))

    stable_state = observed[sw.stable or ""]
    cur = observed.get(sw.current)
    obs = canary.Observation(
        desired_replicas=max(0, sw.desired_replicas), gpus_per_pod=sw.gpus_per_pod,
        stable_spec=stable_state.spec_replicas, canary_spec=cur.spec_replicas if cur else 0,
        stable_ready=stable_state.ready, canary_ready=cur.ready if cur else 0,
        canary_counters=inp.canary_counters, stable_counters=inp.stable_counters,
        load_failure=switch.revision_failure(cur, sw.startup_timeout_seconds, sw.current in sw.served),
        validation=inp.validation, manual=inp.manual)
    decision = canary.next_step(state, inp.rollout, obs, inp.now)
    events.extend(decision.events)
    new = decision.state
    others = tuple(sorted(rev for rev in observed if rev not in (sw.current, sw.stable)))
    retired = tuple(("RevisionRetired", f"retiring intermediate revision {o}") for o in others)

    if new.phase == Phase.PROMOTED:
        result = switch.SwitchPlan(replicas={sw.current: decision.canary_replicas},
                                   retire=(*others, sw.stable or ""), stable=sw.current, promoted=True,
                                   decisions=retired)
    elif new.phase == Phase.ROLLED_BACK:
        result = switch.SwitchPlan(replicas={sw.stable or "": decision.stable_replicas, sw.current: 0},
                                   retire=others, stable=sw.stable, failed=sw.current, failure=new.reason,
                                   decisions=retired)
    else:
        result = switch.SwitchPlan(replicas={sw.stable or "": decision.stable_replicas,
                                             sw.current: decision.canary_replicas},
                                   retire=others, stable=sw.stable, decisions=retired)
    return CanaryPlan(plan=result, state=new, decision=decision, events=tuple(events),
                      main_service_revision=None if decision.canary_in_main_service else sw.stable,
                      run_validation=decision.run_validation)


def _not_canarying(inp: CanaryInput, observed: Mapping[str, RevisionState]) -> CanaryPlan:
    """No canary this pass: the plain switch decides; a canary left live is abandoned."""
    result = switch.plan(inp.switch, observed)
    state = inp.state
    events: tuple[Event, ...] = ()
    if state is not None and state.phase not in canary.DONE and state.revision != inp.switch.failed:
        # The spec went back to the stable revision (or the strategy changed): nothing to judge.
        events = (("Normal", canary.Reason.ABANDONED,
                   f"canary of revision {state.revision} abandoned: the spec no longer asks for it"),)
        state = None
    return CanaryPlan(plan=result, state=state, events=events)
