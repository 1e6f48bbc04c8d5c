"""A revision's build, as status tells it (pure): recorded, running, retrying or failed.

With an artifact store configured (MD_ARTIFACT_STORE), a revision is converted, quantized and
gated once, by its build Job (resources/build_job.py), and its serving pods only fetch the
artifact. This module turns what is observed (status as recorded, the Job and its pods) into one
BuildState; builds.py reads the cluster and the reconciler acts on it:
- **Built / Reused**: the artifact is recorded in status.revisions[].artifact (key, the model
  file's sha256, quantized, the gate's numbers, build duration, reused, when it was recorded).
  From then on the Job is never read again: status is the record, so a Job deleted by its TTL
  changes nothing. A key another ModelDeployment already records is reused without a Job
  (planning/reuse.py).
- **ArtifactRebuild / RebuildLimitReached**: serving pods found the recorded artifact gone or
  corrupt in the store; the record is dropped and the Job runs again, a bounded number of times
  (planning/rebuild.py).
- **Building**: the Job runs; the revision's Deployment is not created yet.
- **WaitingForBuild**: another ModelDeployment has an unfinished build Job for the same key: no
  second Job; its record is reused once it is there (planning/reuse.py).
- **BuildRetrying**: trouble retrying may fix (the store or source unreachable, the store
  refusing access, a corrupt stored copy, a pod killed): the Job controller retries with backoff,
  and after it gives up the operator starts a new Job. Never a failed revision.
- **BuildFailed**: what a retry would repeat (the source's sha256, a model of the wrong format,
  a conversion error, int8 refused by a gate, invalid input; exit 1 or 2): the revision fails once,
  with the builder's message, recorded in status.revisions[].buildFailure until the spec changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import timefmt
from . import podstate
from .termination import last_json_object

CONDITION: Final = "ArtifactReady"
CONTAINER: Final = "build"  # resources.build_job.CONTAINER
TRANSIENT_EXITS: Final = frozenset({75, 77, 65, 66})  # docs/artifacts.md: retried, never a failed revision
DETERMINISTIC_EXITS: Final = frozenset({1, 2})
RETRY_AFTER_SECONDS: Final = 60.0  # a Job that gave up on transient trouble is replaced after this long
MAX_MESSAGE: Final = 1024


class Reason:
    """Reasons of the ArtifactReady condition (docs/artifacts.md)."""

    BUILDING = "Building"
    BUILT = "Built"
    REUSED = "Reused"
    BUILD_FAILED = "BuildFailed"
    BUILD_RETRYING = "BuildRetrying"
    REBUILD = "ArtifactRebuild"  # pods found the stored copy gone or corrupt: built again
    REBUILD_LIMIT = "RebuildLimitReached"  # ... too often: not rebuilt again for this revision
    WAITING = "WaitingForBuild"  # another ModelDeployment's unfinished Job builds the same key: no second Job


@dataclass(frozen=True)
class BuildState:
    """One revision's build: `artifact` once recorded, `failure` when it can never build."""

    reason: str
    message: str
    artifact: Mapping[str, Any] | None = None  # status.revisions[].artifact
    failure: str = ""  # deterministic: the revision fails with this message
    replace_job: bool = False  # the Job gave up on transient trouble long enough ago: start a new one
    new_result: bool = False  # an outcome read from the Job in this pass (not yet in status): one Event
    rebuilds: int = 0  # status.revisions[].artifactRebuilds: times the recorded artifact was dropped
    rebuild: bool = False  # drop the recorded artifact and its finished Job: the next pass builds again
    awaits: tuple[str, str] | None = None  # WaitingForBuild: the (namespace, name) whose build it waits for

    @property
    def ready(self) -> bool:
        return self.artifact is not None

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    @property
    def warning(self) -> bool:
        """Its Event is a Warning: a failed build, or a stored copy pods could not use."""
        return self.failed or self.reason in (Reason.REBUILD, Reason.REBUILD_LIMIT)

    def condition_status(self) -> bool | None:
        """ArtifactReady: True once recorded (unless pods keep finding it broken past the rebuild
        limit), False when the build failed or another ModelDeployment's Job builds it, Unknown
        meanwhile."""
        if self.reason in (Reason.REBUILD_LIMIT, Reason.WAITING):
            return False
        if self.ready:
            return True
        return False if self.failed else None


def _waiting(pods: Iterable[Mapping[str, Any]]) -> str:
    """Why a build pod does not run (ImagePullBackOff, Unschedulable, a missing Secret ...)."""
    # PodInitializing: while the gate's Triton (an int8 build's sidecar) cannot start (ImagePullBackOff
    # of the serving image), the builder only says that; the sidecar's reason is the one to show
    return podstate.waiting_reason(pods, ignore=("ContainerCreating", "PodInitializing"))


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def parse_result(message: str) -> dict[str, Any] | None:
    """The artifact CLI's JSON result: the last line of the termination message that parses as one."""
    return last_json_object(message, "result", str)


def artifact_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """What status.revisions[].artifact keeps of a build's result (no nulls: a merge patch drops them)."""
    record: dict[str, Any] = {
        "key": str(result.get("key", "")),
        "modelSha256": str(result.get("modelSha256", "")),
        "quantized": bool(result.get("quantized", False)),
        "reused": result.get("result") == "reused",
    }
    if isinstance(result.get("buildSeconds"), int | float):
        record["buildSeconds"] = round(float(result["buildSeconds"]), 3)
    if result.get("builtAt"):
        record["builtAt"] = str(result["builtAt"])
    gates = result.get("gates")
    if isinstance(gates, Mapping):
        record["gates"] = {k: v for k, v in gates.items() if v is not None}
    tuning = result.get("tuning")
    if isinstance(tuning, Mapping):
        record["tuning"] = _no_nulls(tuning)
    return record


def _no_nulls(value: Any) -> Any:
    """A merge patch removes keys set to null: keep them out of recorded objects."""
    if isinstance(value, Mapping):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def recorded(previous: Mapping[str, Any], revision: str) -> BuildState | None:
    """The build of `revision` as status already records it, or None (not built yet, or unknown)."""
    for entry in previous.get("revisions") or ():
        if entry.get("revision") != revision:
            continue
        artifact = entry.get("artifact")
        if isinstance(artifact, Mapping) and artifact.get("key"):
            return _done(revision, artifact)
        if entry.get("buildFailure"):
            failure = str(entry["buildFailure"])
            return BuildState(Reason.BUILD_FAILED, f"revision {revision}: {failure}", failure=failure)
    return None


def _done(revision: str, artifact: Mapping[str, Any], new: bool = False) -> BuildState:
    sha = str(artifact.get("modelSha256", ""))[:12]
    if artifact.get("reused"):
        return BuildState(Reason.REUSED, f"revision {revision}: artifact {artifact.get('key')} reused from the store "
                                         f"(model sha256 {sha}…)", artifact=artifact, new_result=new)
    took = artifact.get("buildSeconds")
    took_text = f" in {took:.1f}s" if isinstance(took, int | float) else ""
    tuning = artifact.get("tuning")
    tuned = ""
    if isinstance(tuning, Mapping) and isinstance(tuning.get("tuned"), Mapping):
        t, d = tuning["tuned"], tuning.get("default") or {}
        tuned = (f"; tuned: {t.get('throughput')}/s p99 {t.get('p99Ms')}ms vs the default's {d.get('throughput')}/s "
                 f"p99 {d.get('p99Ms')}ms at concurrency {t.get('concurrency')}")
        if not tuning.get("boundMet", True):
            tuned += f" (no configuration met maxP99 {tuning.get('maxP99Ms')}ms)"
    return BuildState(Reason.BUILT, f"revision {revision}: artifact {artifact.get('key')} built{took_text} "
                                    f"(model sha256 {sha}…){tuned}", artifact=artifact, new_result=new)


def _job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _attempt(term: Mapping[str, Any]) -> tuple[int | None, str, bool]:
    """(exit code, what the builder said, transient) of one finished build container."""
    code = term.get("exitCode")
    result = parse_result(term.get("message", ""))
    if result is not None and result.get("reason"):
        said = str(result["reason"])
    else:
        lines = [ln.strip() for ln in (term.get("message") or "").splitlines() if ln.strip()]
        said = lines[-1] if lines else f"{term.get('reason') or 'Error'}, exit code {code}"
    if term.get("reason") == "OOMKilled":
        return code, f"OOMKilled (exit code {code}): the build needs more memory (spec.serving.resources)", False
    transient = code in TRANSIENT_EXITS or (code in (137, 143) and result is None)
    return code, said, transient


def age(cond: Mapping[str, Any], now: dt.datetime) -> float:
    raw = cond.get("lastTransitionTime") or ""
    try:
        when = dt.datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return RETRY_AFTER_SECONDS  # unknown: do not wait for a time that will never come
    return (now - when).total_seconds()


def from_job(revision: str, job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: dt.datetime) -> BuildState:
    """The build of `revision` from its Job and the Job's pods (the newest finished pod speaks for it)."""
    name = (job.get("metadata") or {}).get("name", "")
    ordered = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    finished = [(p, t) for p in ordered if (t := podstate.terminated(p, CONTAINER)) is not None]
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    if complete is not None:
        for _, term in reversed(finished):
            result = parse_result(term.get("message", ""))
            if result is not None and result.get("result") in ("built", "reused") and result.get("key"):
                return _done(revision, {**artifact_record(result), "recordedAt": timefmt.rfc3339_at(now)}, new=True)
        return BuildState(Reason.BUILD_FAILED, f"revision {revision}: build Job {name} completed without a result",
                          failure=f"build Job {name} completed without a result", new_result=True)
    last = next(((code, said, transient) for _, t in reversed(finished)
                 for code, said, transient in [_attempt(t)] if code != 0), None)
    if failed is not None:
        why = failed.get("reason") or "Failed"
        if why == "DeadlineExceeded":
            failure = f"build did not finish within the Job's deadline ({failed.get('message') or why})"
            return BuildState(Reason.BUILD_FAILED, f"revision {revision}: {failure}", failure=_short(failure),
                              new_result=True)
        if last is not None and not last[2]:
            failure = _short(f"build failed: {last[1]}")
            return BuildState(Reason.BUILD_FAILED, f"revision {revision}: {failure}", failure=failure, new_result=True)
        detail = last[1] if last else (_waiting(ordered) or failed.get("message") or why)
        replace = age(failed, now) >= RETRY_AFTER_SECONDS
        return BuildState(Reason.BUILD_RETRYING, _short(
            f"revision {revision}: build Job {name} gave up ({why}): {detail}; "
            f"a new build starts {'now' if replace else f'{RETRY_AFTER_SECONDS:.0f}s after it gave up'}"),
            replace_job=replace)
    if last is not None:  # an earlier attempt failed and the Job controller retries it
        attempts = int((job.get("status") or {}).get("failed") or 0)
        return BuildState(Reason.BUILD_RETRYING, _short(
            f"revision {revision}: build attempt {attempts} failed (exit code {last[0]}): {last[1]}; retrying"))
    waiting = _waiting(ordered)
    return BuildState(Reason.BUILDING, _short(f"revision {revision}: build Job {name} running"
                                              + (f" ({waiting})" if waiting else "")))


def starting(revision: str, job: str) -> BuildState:
    """The Job was just created (or is about to be)."""
    return BuildState(Reason.BUILDING, f"revision {revision}: build Job {job} started")
