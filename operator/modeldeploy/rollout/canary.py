"""The canary state machine (pure): next_step(state, spec, observation, now) -> Decision.

Phases: Validating -> Progressing (step i) -> Promoting -> Promoted, or RollingBack -> RolledBack;
Paused holds any live phase. Everything the machine needs to continue after an operator restart
is in CanaryState, which the reconciler stores in status.canary (see to_status / from_status).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..api import RolloutSpec
from ..planning.switch import trade
from ..timefmt import parse_rfc3339, rfc3339
from .analysis import Analysis, Counters, Thresholds, Verdict, judge
from .traffic import split

MAX_ANALYSES_KEPT = 10


class Phase:
    VALIDATING = "Validating"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"


LIVE = (Phase.VALIDATING, Phase.PROGRESSING, Phase.PROMOTING, Phase.ROLLING_BACK)
DONE = (Phase.PROMOTED, Phase.ROLLED_BACK)


class Reason:
    STARTED = "CanaryStarted"
    VALIDATION_PASSED = "ValidationPassed"
    VALIDATION_FAILED = "ValidationFailed"
    STEP_REACHED = "CanaryStepReached"
    STEP_PASSED = "CanaryStepPassed"
    ANALYSIS = "CanaryAnalysis"
    ANALYSIS_FAILED = "CanaryAnalysisFailed"
    PROMOTING = "CanaryPromoting"
    PROMOTED = "CanaryPromoted"
    ROLLING_BACK = "CanaryRollingBack"
    ROLLED_BACK = "CanaryRolledBack"
    LOAD_FAILED = "LoadFailed"
    ABORTED = "Aborted"
    ABANDONED = "CanaryAbandoned"
    PAUSED = "CanaryPaused"
    RESUMED = "CanaryResumed"


class Manual:
    """What a user asked for by annotation (modeldeploy.io/promote=now, /pause, /abort)."""

    PROMOTE = "promote"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True)
class CanaryState:
    phase: str
    revision: str  # the canary revision
    stable: str  # the revision it replaces and is compared with
    started_at: float
    step: int = 0
    step_started_at: float | None = None  # when the step's weight was reached
    last_analysis_at: float | None = None
    last_canary: Counters = field(default_factory=Counters)
    last_stable: Counters = field(default_factory=Counters)
    failures: int = 0  # consecutive failed analyses
    passes_in_step: int = 0
    paused_from: str | None = None
    reason: str = ""
    analyses: tuple[dict[str, Any], ...] = ()
    validation: dict[str, Any] | None = None  # status.canary.validation once the gate has run
    cause: str = ""  # the Reason of a rollback (LoadFailed, CanaryAnalysisFailed, ValidationFailed, Aborted)


@dataclass(frozen=True)
class Observation:
    desired_replicas: int
    gpus_per_pod: int
    stable_spec: int  # replicas the stable Deployment has now
    canary_spec: int
    stable_ready: int
    canary_ready: int
    canary_counters: Counters | None  # None: the metrics could not be read
    stable_counters: Counters | None
    load_failure: str = ""
    validation: tuple[bool, str] | None = None  # (passed, message) once a validation ran
    manual: str | None = None


@dataclass(frozen=True)
class Decision:
    state: CanaryState
    stable_replicas: int
    canary_replicas: int
    canary_in_main_service: bool  # False while validating: no live traffic before the gate
    run_validation: bool = False
    events: tuple[tuple[str, str, str], ...] = ()  # (Normal|Warning, reason, message)

    @property
    def weight(self) -> float:
        total = self.stable_replicas + self.canary_replicas
        return 100.0 * self.canary_replicas / total if total else 0.0


def start(revision: str, stable: str, rollout: RolloutSpec, now: float) -> CanaryState:
    """A new canary for `revision`: validated first when the spec asks for it."""
    phase = Phase.VALIDATING if rollout.validation else Phase.PROGRESSING
    return CanaryState(phase=phase, revision=revision, stable=stable, started_at=now)


def _thresholds(rollout: RolloutSpec) -> Thresholds:
    a = rollout.analysis
    return Thresholds(a.min_requests, a.max_error_rate, a.max_latency_ratio, a.max_p99_latency)


def _surge(obs: Observation, rollout: RolloutSpec) -> int:
    if obs.gpus_per_pod <= 0:
        return max(1, obs.desired_replicas)
    return rollout.max_surge_gpus // obs.gpus_per_pod


def _rolling_back(state: CanaryState, reason: str, message: str, obs: Observation) -> Decision:
    st = dataclasses.replace(state, phase=Phase.ROLLING_BACK, reason=message, paused_from=None, cause=reason)
    return Decision(st, obs.desired_replicas, 0, True,
                    events=((("Warning", reason, f"rolling back revision {state.revision}: {message}")),))


def _promotion_targets(obs: Observation, rollout: RolloutSpec) -> tuple[int, int]:
    """Grow the canary to every replica, removing a stable pod only once a canary pod is Ready."""
    return trade(obs.desired_replicas, _surge(obs, rollout), obs.stable_spec, obs.canary_spec, obs.canary_ready)


def next_step(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    """One tick of the canary: what replicas to run and what the state becomes."""
    if state.phase in DONE:
        replicas = (0, obs.desired_replicas) if state.phase == Phase.PROMOTED else (obs.desired_replicas, 0)
        return Decision(state, replicas[0], replicas[1], True)

    # Users first: abort and promote win over everything, pause holds the current split.
    if obs.manual == Manual.ABORT and state.phase != Phase.ROLLING_BACK:
        return _rolling_back(state, Reason.ABORTED, "aborted by annotation", obs)
    if obs.load_failure and state.phase != Phase.ROLLING_BACK:
        return _rolling_back(state, Reason.LOAD_FAILED, obs.load_failure, obs)
    if obs.manual == Manual.PROMOTE and state.phase in (Phase.VALIDATING, Phase.PROGRESSING, Phase.PAUSED):
        st = dataclasses.replace(state, phase=Phase.PROMOTING, paused_from=None, reason="promoted by annotation")
        stable, canary = _promotion_targets(obs, rollout)
        return Decision(st, stable, canary, True,
                        events=(("Normal", Reason.PROMOTING, f"revision {state.revision}: promoted by annotation"),))
    if state.phase == Phase.PAUSED:
        if obs.manual == Manual.PAUSE:
            return Decision(state, obs.stable_spec, obs.canary_spec, state.paused_from != Phase.VALIDATING)
        resumed = dataclasses.replace(state, phase=state.paused_from or Phase.PROGRESSING, paused_from=None,
                                      step_started_at=None)
        d = next_step(resumed, rollout, obs, now)
        return dataclasses.replace(d, events=(("Normal", Reason.RESUMED, "canary resumed"), *d.events))
    if obs.manual == Manual.PAUSE and state.phase in (Phase.VALIDATING, Phase.PROGRESSING):
        st = dataclasses.replace(state, phase=Phase.PAUSED, paused_from=state.phase)
        return Decision(st, obs.stable_spec, obs.canary_spec, state.phase != Phase.VALIDATING,
                        events=(("Normal", Reason.PAUSED, f"canary paused at step {state.step}"),))

    if state.phase == Phase.VALIDATING:
        return _validating(state, rollout, obs)
    if state.phase == Phase.PROGRESSING:
        return _progressing(state, rollout, obs, now)
    if state.phase == Phase.PROMOTING:
        if obs.canary_ready >= obs.desired_replicas and obs.stable_spec == 0:
            st = dataclasses.replace(state, phase=Phase.PROMOTED, reason="")
            return Decision(st, 0, obs.desired_replicas, True,
                            events=(("Normal", Reason.PROMOTED, f"revision {state.revision} promoted: serves all "
                                                                f"{obs.desired_replicas} replicas"),))
        stable, canary = _promotion_targets(obs, rollout)
        return Decision(state, stable, canary, True)
    # RollingBack: the stable revision back to full size first, then the canary pods go.
    if obs.canary_ready == 0 and obs.canary_spec == 0:
        st = dataclasses.replace(state, phase=Phase.ROLLED_BACK)
        return Decision(st, obs.desired_replicas, 0, True,
                        events=(("Warning", Reason.ROLLED_BACK,
                                 f"revision {state.revision} rolled back: {state.reason}"),))
    return Decision(state, obs.desired_replicas, 0, True)


def _validating(state: CanaryState, rollout: RolloutSpec, obs: Observation) -> Decision:
    sp = split(obs.desired_replicas, 1, obs.gpus_per_pod, rollout.max_surge_gpus)
    stable, canary = max(sp.stable, 1 if obs.desired_replicas > 1 else sp.stable), 1
    if obs.validation is None:
        return Decision(state, stable, canary, False, run_validation=obs.canary_ready >= 1)
    passed, message = obs.validation
    state = dataclasses.replace(state, validation={"verdict": "Passed" if passed else "Failed", "message": message})
    if not passed:
        return _rolling_back(state, Reason.VALIDATION_FAILED, f"validation failed: {message}", obs)
    st = dataclasses.replace(state, phase=Phase.PROGRESSING, step=0, step_started_at=None)
    return Decision(st, stable, canary, True,
                    events=(("Normal", Reason.VALIDATION_PASSED, f"revision {state.revision}: {message}"),))


def _progressing(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    step = rollout.steps[state.step]
    sp = split(obs.desired_replicas, step.weight, obs.gpus_per_pod, rollout.max_surge_gpus)
    events: list[tuple[str, str, str]] = []
    st = state

    if st.step_started_at is None:
        if obs.canary_ready < sp.canary or obs.stable_ready < sp.stable:
            return Decision(st, sp.stable, sp.canary, True)  # pods still starting: no clock yet
        st = dataclasses.replace(st, step_started_at=now, last_analysis_at=now, passes_in_step=0,
                                 last_canary=obs.canary_counters or Counters(),
                                 last_stable=obs.stable_counters or Counters())
        events.append(("Normal", Reason.STEP_REACHED,
                       f"step {st.step + 1}/{len(rollout.steps)}: {sp.canary} canary pod(s), "
                       f"weight {sp.weight:.0f}% (target {step.weight}%)"))
        return Decision(st, sp.stable, sp.canary, True, events=tuple(events))

    assert st.last_analysis_at is not None
    if now - st.last_analysis_at >= rollout.analysis.interval or _fails_early(st, rollout, obs):
        st, verdict_event = _analyse(st, rollout, obs, now)
        events.append(verdict_event)
        if st.failures >= rollout.analysis.failure_limit:
            d = _rolling_back(st, Reason.ANALYSIS_FAILED, st.analyses[-1]["reason"], obs)
            return dataclasses.replace(d, events=(*events, *d.events))

    if now - st.step_started_at >= step.pause and st.passes_in_step > 0 and st.failures == 0:
        events.append(("Normal", Reason.STEP_PASSED, f"step {st.step + 1}/{len(rollout.steps)} passed "
                                                     f"({st.passes_in_step} passing analyses)"))
        if st.step + 1 < len(rollout.steps):
            st = dataclasses.replace(st, step=st.step + 1, step_started_at=None, passes_in_step=0)
            nxt = rollout.steps[st.step]
            sp = split(obs.desired_replicas, nxt.weight, obs.gpus_per_pod, rollout.max_surge_gpus)
        else:
            st = dataclasses.replace(st, phase=Phase.PROMOTING)
            events.append(("Normal", Reason.PROMOTING, f"revision {st.revision}: all steps passed, promoting"))
            stable, canary = _promotion_targets(obs, rollout)
            return Decision(st, stable, canary, True, events=tuple(events))
    return Decision(st, sp.stable, sp.canary, True, events=tuple(events))


def _fails_early(st: CanaryState, rollout: RolloutSpec, obs: Observation) -> bool:
    """Bad news does not wait for the interval: once the window since the last analysis holds
    minRequests canary requests and already fails, it is judged now. Good news waits: a pass needs
    the whole interval, and missing metrics are judged only when the interval is over."""
    if obs.canary_counters is None or obs.stable_counters is None:
        return False
    window = judge(obs.canary_counters.minus(st.last_canary), obs.stable_counters.minus(st.last_stable),
                   _thresholds(rollout))
    return window.verdict == Verdict.FAIL


def _analyse(st: CanaryState, rollout: RolloutSpec, obs: Observation,
             now: float) -> tuple[CanaryState, tuple[str, str, str]]:
    at = rfc3339(now)
    if obs.canary_counters is None or obs.stable_counters is None:
        # Missing data never passes: a canary whose metrics cannot be read may be the broken one.
        result = Analysis(Verdict.FAIL, 0, 0.0, None, "metrics could not be read")
        canary_now, stable_now = st.last_canary, st.last_stable
    else:
        canary_now, stable_now = obs.canary_counters, obs.stable_counters
        result = judge(canary_now.minus(st.last_canary), stable_now.minus(st.last_stable), _thresholds(rollout))
    failures = st.failures + 1 if result.verdict == Verdict.FAIL else (0 if result.verdict == Verdict.PASS
                                                                        else st.failures)
    passes = st.passes_in_step + (1 if result.verdict == Verdict.PASS else 0)
    analyses = (*st.analyses, {**result.to_dict(at), "step": st.step})[-MAX_ANALYSES_KEPT:]
    new = dataclasses.replace(st, last_analysis_at=now, last_canary=canary_now, last_stable=stable_now,
                              failures=failures, passes_in_step=passes, analyses=analyses)
    kind = "Warning" if result.verdict == Verdict.FAIL else "Normal"
    return new, (kind, Reason.ANALYSIS, f"step {st.step + 1}: {result.verdict}: {result.reason} "
                                        f"({int(result.requests)} requests)")


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    """The API server drops nulls of non-nullable fields: leaving them out keeps status comparable."""
    return {k: v for k, v in d.items() if v is not None}


def to_status(state: CanaryState, decision: Decision | None = None) -> dict[str, Any]:
    """status.canary: what users read, plus what a restarted operator needs to continue."""
    live = decision is not None and state.phase not in DONE
    return _without_none({
        "phase": state.phase, "revision": state.revision, "stableRevision": state.stable,
        "step": state.step, "weight": round(decision.weight) if live and decision else None,
        "canaryReplicas": decision.canary_replicas if live and decision else None,
        "stableReplicas": decision.stable_replicas if live and decision else None,
        "startedAt": rfc3339(state.started_at, micro=True),
        "stepStartedAt": rfc3339(state.step_started_at, micro=True),
        "lastAnalysisAt": rfc3339(state.last_analysis_at, micro=True),
        "failures": state.failures, "passesInStep": state.passes_in_step, "pausedFrom": state.paused_from,
        "paused": state.phase == Phase.PAUSED, "message": state.reason or None, "rollbackReason": state.cause or None,
        "analyses": [_without_none(a) for a in state.analyses],
        "validation": state.validation,
        "lastSample": {"canary": state.last_canary.to_dict(), "stable": state.last_stable.to_dict()},
    })


def from_status(d: dict[str, Any] | None) -> CanaryState | None:
    if not d or not d.get("revision"):
        return None
    sample = d.get("lastSample") or {}
    started = parse_rfc3339(d.get("startedAt"))
    return CanaryState(
        phase=d["phase"], revision=d["revision"], stable=d.get("stableRevision", ""),
        started_at=started if started is not None else 0.0, step=int(d.get("step", 0)),
        step_started_at=parse_rfc3339(d.get("stepStartedAt")),
        last_analysis_at=parse_rfc3339(d.get("lastAnalysisAt")),
        last_canary=Counters.from_dict(sample.get("canary")), last_stable=Counters.from_dict(sample.get("stable")),
        failures=int(d.get("failures", 0)), passes_in_step=int(d.get("passesInStep", 0)),
        paused_from=d.get("pausedFrom"), reason=d.get("message", ""), analyses=tuple(d.get("analyses") or ()),
        validation=d.get("validation"), cause=d.get("rollbackReason", ""))
