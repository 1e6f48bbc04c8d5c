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
from ..timefmt import parse_rfc3339, rfc3339
from . import replicas
from .analysis import Analysis, Counters, Thresholds, Verdict, judge
from .replicas import Live, Split

MAX_ANALYSES_KEPT = 10
P99_WINDOW_S = 60.0  # Triton's latency summaries cover the last 48-60 s (rollout/analysis.py)


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
# A rollout under way: live, or paused waiting for its annotation (not finished either way).
UNDER_WAY = (*LIVE, Phase.PAUSED)


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
    WAITING = "CanaryWaiting"
    PROGRESS_DEADLINE = "ProgressDeadlineExceeded"


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
    last_progress_at: float | None = None  # a step reached or passed, a verdict: the progress deadline's clock
    waiting: str = ""  # why the canary holds without deciding (no replicas, no zero-downtime surge)


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
    load_failure: str = ""  # the canary cannot load, for a reason retrying never fixes
    validation: tuple[bool, str] | None = None  # (passed, message) once a validation ran
    manual: str | None = None

    def live(self, *, canary_serving: bool = True) -> Live:
        """Replicas and Ready pods now; a canary that takes no live traffic serves nobody."""
        return Live(self.stable_spec, self.canary_spec, self.stable_ready,
                    self.canary_ready if canary_serving else 0)


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
    return CanaryState(phase=phase, revision=revision, stable=stable, started_at=now, last_progress_at=now)


def _thresholds(rollout: RolloutSpec) -> Thresholds:
    a = rollout.analysis
    return Thresholds(a.min_requests, a.max_error_rate, a.max_latency_ratio, a.max_p99_latency)


def _surge(obs: Observation, rollout: RolloutSpec) -> int:
    return replicas.surge_pods(obs.desired_replicas, obs.gpus_per_pod, rollout.max_surge_gpus)


def _rolling_back(state: CanaryState, reason: str, message: str, obs: Observation) -> Decision:
    st = dataclasses.replace(state, phase=Phase.ROLLING_BACK, reason=message, paused_from=None, cause=reason,
                             waiting="")
    sp = replicas.rollback_targets(obs.desired_replicas, obs.live())
    return Decision(st, sp.stable, sp.canary, True,
                    events=((("Warning", reason, f"rolling back revision {state.revision}: {message}")),))


def _promotion_targets(obs: Observation, rollout: RolloutSpec) -> tuple[int, int]:
    """Grow the canary to every replica, removing a stable pod only once a canary pod is Ready."""
    sp = replicas.promotion_targets(obs.desired_replicas, _surge(obs, rollout), obs.live())
    return sp.stable, sp.canary


def _why_waiting(obs: Observation, rollout: RolloutSpec) -> str:
    """Why the canary can make no move that keeps the model available, or ''."""
    if obs.desired_replicas <= 0:
        return "replicas is 0: the canary waits for replicas to come back (nothing serves, nothing to judge)"
    if replicas.blocked(obs.desired_replicas, _surge(obs, rollout)):
        return ("1 replica and no surge budget: a canary pod would replace the only serving pod; set "
                "spec.rollout.maxSurgeGpus to at least one pod's GPUs (or remove it: one pod is the default), "
                "or choose the downtime with spec.rollout.strategy Recreate")
    return ""


def _hold(state: CanaryState, why: str, obs: Observation, now: float) -> Decision:
    """Keep everything as it is, with no clock running; one event when the wait begins."""
    events: tuple[tuple[str, str, str], ...] = ()
    if state.waiting != why:
        events = (("Warning", Reason.WAITING, f"canary of revision {state.revision} waits: {why}"),)
    st = dataclasses.replace(state, waiting=why, step_started_at=None, last_progress_at=now)
    stable = obs.stable_spec if obs.desired_replicas > 0 else 0
    canary = obs.canary_spec if obs.desired_replicas > 0 else 0
    return Decision(st, stable, canary, state.phase != Phase.VALIDATING, events=events)


def _deadline_passed(state: CanaryState, rollout: RolloutSpec, now: float) -> bool:
    """No step reached, no step passed and no verdict for progressDeadline (Inconclusive analyses are
    no progress: a canary nobody calls ends instead of holding the rollout forever)."""
    if state.phase not in (Phase.VALIDATING, Phase.PROGRESSING) or rollout.progress_deadline <= 0:
        return False
    since = state.last_progress_at if state.last_progress_at is not None else state.started_at
    return now - since > rollout.progress_deadline


def next_step(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    """One tick of the canary: what replicas to run and what the state becomes."""
    if state.phase in DONE:
        stable, canary = (0, obs.desired_replicas) if state.phase == Phase.PROMOTED else (obs.desired_replicas, 0)
        return Decision(state, stable, canary, True)

    # Users first: abort and promote win over everything, pause holds the current split.
    if obs.manual == Manual.ABORT and state.phase != Phase.ROLLING_BACK:
        return _rolling_back(state, Reason.ABORTED, "aborted by annotation", obs)
    if obs.load_failure and state.phase != Phase.ROLLING_BACK:
        return _rolling_back(state, Reason.LOAD_FAILED, obs.load_failure, obs)
    if obs.manual == Manual.PROMOTE and state.phase in (Phase.VALIDATING, Phase.PROGRESSING, Phase.PAUSED):
        st = dataclasses.replace(state, phase=Phase.PROMOTING, paused_from=None, reason="promoted by annotation")
        d = _promoting(st, rollout, obs, now)
        return dataclasses.replace(d, events=(("Normal", Reason.PROMOTING,
                                               f"revision {state.revision}: promoted by annotation"), *d.events))
    if state.phase == Phase.PAUSED:
        if obs.manual == Manual.PAUSE:
            return Decision(state, obs.stable_spec, obs.canary_spec, state.paused_from != Phase.VALIDATING)
        resumed = dataclasses.replace(state, phase=state.paused_from or Phase.PROGRESSING, paused_from=None,
                                      step_started_at=None, last_progress_at=now)
        d = next_step(resumed, rollout, obs, now)
        return dataclasses.replace(d, events=(("Normal", Reason.RESUMED, "canary resumed"), *d.events))
    if obs.manual == Manual.PAUSE and state.phase in (Phase.VALIDATING, Phase.PROGRESSING):
        st = dataclasses.replace(state, phase=Phase.PAUSED, paused_from=state.phase)
        return Decision(st, obs.stable_spec, obs.canary_spec, state.phase != Phase.VALIDATING,
                        events=(("Normal", Reason.PAUSED, f"canary paused at step {state.step}"),))
    if state.phase == Phase.PROMOTING:
        return _promoting(state, rollout, obs, now)
    if state.phase == Phase.ROLLING_BACK:
        return _rolled_back_once_stable_serves(state, obs)

    why = _why_waiting(obs, rollout)
    if why:
        return _hold(state, why, obs, now)
    if state.waiting:
        state = dataclasses.replace(state, waiting="")
    if _deadline_passed(state, rollout, now):
        last = state.analyses[-1]["reason"] if state.analyses else "no analysis yet"
        return _rolling_back(state, Reason.PROGRESS_DEADLINE,
                             f"no progress for {rollout.progress_deadline:.0f}s (progressDeadline); "
                             f"last analysis: {last}", obs)
    if state.phase == Phase.VALIDATING:
        return _validating(state, rollout, obs, now)
    return _progressing(state, rollout, obs, now)


def _promoting(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    """The canary grows to every replica; promoted once it serves them all and the stable revision
    has no pods left."""
    why = _why_waiting(obs, rollout)
    if why and obs.desired_replicas > 0:
        return _hold(state, why, obs, now)
    if obs.canary_ready >= obs.desired_replicas and obs.stable_spec == 0:
        st = dataclasses.replace(state, phase=Phase.PROMOTED, reason="", waiting="")
        return Decision(st, 0, obs.desired_replicas, True,
                        events=(("Normal", Reason.PROMOTED, f"revision {state.revision} promoted: serves all "
                                                            f"{obs.desired_replicas} replicas"),))
    stable, canary = _promotion_targets(obs, rollout)
    return Decision(dataclasses.replace(state, waiting=""), stable, canary, True)


def _rolled_back_once_stable_serves(state: CanaryState, obs: Observation) -> Decision:
    """The stable revision back to full size first, then the canary pods go."""
    if obs.canary_ready == 0 and obs.canary_spec == 0:
        st = dataclasses.replace(state, phase=Phase.ROLLED_BACK)
        return Decision(st, obs.desired_replicas, 0, True,
                        events=(("Warning", Reason.ROLLED_BACK,
                                 f"revision {state.revision} rolled back: {state.reason}"),))
    sp = replicas.rollback_targets(obs.desired_replicas, obs.live())
    return Decision(state, sp.stable, sp.canary, True)


def _validating(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    """One canary pod, outside the main Service, while the stable revision keeps serving in full
    (its pods are not counted as serving: they take no live traffic)."""
    d, surge = obs.desired_replicas, _surge(obs, rollout)
    goal = Split(stable=max(0, d - max(0, 1 - surge)), canary=1)
    sp = replicas.targets(d, goal, surge, obs.live(canary_serving=False))
    stable, canary = sp.stable, sp.canary
    if obs.validation is None:
        return Decision(state, stable, canary, False, run_validation=obs.canary_ready >= 1)
    passed, message = obs.validation
    state = dataclasses.replace(state, validation={"verdict": "Passed" if passed else "Failed", "message": message})
    if not passed:
        return _rolling_back(state, Reason.VALIDATION_FAILED, f"validation failed: {message}", obs)
    st = dataclasses.replace(state, phase=Phase.PROGRESSING, step=0, step_started_at=None, last_progress_at=now)
    return Decision(st, stable, canary, True,
                    events=(("Normal", Reason.VALIDATION_PASSED, f"revision {state.revision}: {message}"),))


def _progressing(state: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> Decision:
    step = rollout.steps[state.step]
    surge = _surge(obs, rollout)
    goal = replicas.step_split(obs.desired_replicas, step.weight, surge)
    sp = replicas.targets(obs.desired_replicas, goal, surge, obs.live())
    events: list[tuple[str, str, str]] = []
    st = state

    if st.step_started_at is None:
        if obs.canary_ready < goal.canary or obs.stable_ready < goal.stable:
            return Decision(st, sp.stable, sp.canary, True)  # pods still starting: no clock yet
        sp = goal
        st = dataclasses.replace(st, step_started_at=now, last_analysis_at=now, passes_in_step=0, last_progress_at=now,
                                 last_canary=obs.canary_counters or Counters(),
                                 last_stable=obs.stable_counters or Counters())
        events.append(("Normal", Reason.STEP_REACHED,
                       f"step {st.step + 1}/{len(rollout.steps)}: {goal.canary} canary pod(s) beside "
                       f"{goal.stable} stable, weight {goal.weight:.0f}% (target {step.weight}%)"))
        return Decision(st, sp.stable, sp.canary, True, events=tuple(events))

    assert st.last_analysis_at is not None
    if now - st.last_analysis_at >= rollout.analysis.interval or _fails_early(st, rollout, obs, now):
        st, verdict_event = _analyse(st, rollout, obs, now)
        events.append(verdict_event)
        if st.failures >= rollout.analysis.failure_limit:
            d = _rolling_back(st, Reason.ANALYSIS_FAILED, st.analyses[-1]["reason"], obs)
            return dataclasses.replace(d, events=(*events, *d.events))

    if now - st.step_started_at >= step.pause and st.passes_in_step > 0 and st.failures == 0:
        events.append(("Normal", Reason.STEP_PASSED, f"step {st.step + 1}/{len(rollout.steps)} passed "
                                                     f"({st.passes_in_step} passing analyses)"))
        if st.step + 1 < len(rollout.steps):
            st = dataclasses.replace(st, step=st.step + 1, step_started_at=None, passes_in_step=0,
                                     last_progress_at=now)
            nxt = replicas.step_split(obs.desired_replicas, rollout.steps[st.step].weight, surge)
            sp = replicas.targets(obs.desired_replicas, nxt, surge, obs.live())
        else:
            st = dataclasses.replace(st, phase=Phase.PROMOTING)
            events.append(("Normal", Reason.PROMOTING, f"revision {st.revision}: all steps passed, promoting"))
            d = _promoting(st, rollout, obs, now)
            return dataclasses.replace(d, events=(*events, *d.events))
    return Decision(st, sp.stable, sp.canary, True, events=tuple(events))


def _windows(st: CanaryState, canary_now: Counters, stable_now: Counters, now: float) -> tuple[Counters, Counters]:
    """The traffic since the last analysis, canary and stable.

    Triton's p99 covers its own sliding window (up to P99_WINDOW_S), not ours: until a step has run
    that long, the canary's window still holds what came before it (its pods' first, cold
    requests; the validation Job's batches), and a few dozen requests make a p99 that is their
    maximum. Measured on the real node: a good version's canary showed a p99 1.42x the stable's in
    its first seconds and was rolled back. So a step younger than the window is judged on means.
    """
    canary_w, stable_w = canary_now.minus(st.last_canary), stable_now.minus(st.last_stable)
    settled = st.step_started_at is not None and now - st.step_started_at >= P99_WINDOW_S
    if not settled:
        canary_w, stable_w = dataclasses.replace(canary_w, p99_us=None), dataclasses.replace(stable_w, p99_us=None)
    return canary_w, stable_w


def _fails_early(st: CanaryState, rollout: RolloutSpec, obs: Observation, now: float) -> bool:
    """Bad news does not wait for the interval: once the window since the last analysis holds
    minRequests canary requests and already fails, it is judged now. Good news waits: a pass needs
    the whole interval, and missing metrics are judged only when the interval is over."""
    if obs.canary_counters is None or obs.stable_counters is None:
        return False
    window = judge(*_windows(st, obs.canary_counters, obs.stable_counters, now), _thresholds(rollout))
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
        result = judge(*_windows(st, obs.canary_counters, obs.stable_counters, now), _thresholds(rollout))
    failures = st.failures + 1 if result.verdict == Verdict.FAIL else (0 if result.verdict == Verdict.PASS
                                                                        else st.failures)
    passes = st.passes_in_step + (1 if result.verdict == Verdict.PASS else 0)
    analyses = (*st.analyses, {**result.to_dict(at), "step": st.step})[-MAX_ANALYSES_KEPT:]
    progress = now if result.verdict != Verdict.INCONCLUSIVE else st.last_progress_at
    new = dataclasses.replace(st, last_analysis_at=now, last_canary=canary_now, last_stable=stable_now,
                              failures=failures, passes_in_step=passes, analyses=analyses, last_progress_at=progress)
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
        "lastProgressAt": rfc3339(state.last_progress_at, micro=True), "waiting": state.waiting or None,
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
        validation=d.get("validation"), cause=d.get("rollbackReason", ""),
        last_progress_at=parse_rfc3339(d.get("lastProgressAt")), waiting=d.get("waiting", ""))
