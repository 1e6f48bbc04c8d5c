"""Build again an artifact the serving pods could not use: gone from the store, or corrupt there (pure).

A built revision's serving pods only fetch its recorded artifact. When a pod's fetch init container
exits 66 (ArtifactNotBuilt: the store has no manifest under the key, it lost it) or 65
(ArtifactCorrupt: a stored file does not match the manifest), the record in status no longer
describes the store. The operator drops it and runs the build Job again: the Job finds no artifact,
or a bad one whose manifest it deletes first, and builds (artifact/build.py). The pods retry their
fetch by themselves (the kubelet restarts the init container with backoff) and get the new copy.
A bad copy is never served: the fetch verifies every byte before Triton starts.

Two guards keep this from looping:
- only a fetch that ended after the artifact was recorded counts (artifact.recordedAt): a pod that
  failed while the rebuild ran still shows that exit in its lastState until its next try;
- at most MAX_REBUILDS per revision (status.revisions[].artifactRebuilds). Past that, a store that
  keeps losing or corrupting bytes gets ArtifactReady=False/RebuildLimitReached and one Warning;
  the revision is never marked failed (the store is the platform's, not the model's fault), its
  pods keep retrying, and a new revision starts counting from zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import constants, timefmt
from .build import CONDITION, BuildState, Reason
from .observe import ARTIFACT_FETCH_TROUBLE

MAX_REBUILDS: Final = 3
LOST_EXITS: Final = frozenset({65, 66})  # corrupt, not built; 77 (store refused) is not the copy's fault
FIELD: Final = "artifactRebuilds"  # in status.revisions[]


@dataclass(frozen=True)
class FetchFailure:
    """A serving pod's fetch that found the artifact missing or corrupt."""

    pod: str
    exit_code: int
    finished_at: str
    said: str  # the fetch's last line

    @property
    def reason(self) -> str:
        return ARTIFACT_FETCH_TROUBLE[self.exit_code]

    def describe(self) -> str:
        text = f"pod {self.pod}: artifact fetch exited {self.exit_code} ({self.reason})"
        return f"{text}: {self.said}" if self.said else text


def rebuilds(previous: Mapping[str, Any], revision: str) -> int:
    """How often the revision's artifact was dropped and built again (status.revisions[].artifactRebuilds)."""
    for entry in previous.get("revisions") or ():
        if entry.get("revision") == revision:
            value = entry.get(FIELD)
            return value if isinstance(value, int) and value > 0 else 0
    return 0


def _after(finished_at: str, since: str) -> bool:
    """Whether a fetch that ended at `finished_at` is news about the copy recorded at `since`."""
    try:
        recorded, finished = timefmt.parse_rfc3339(since), timefmt.parse_rfc3339(finished_at)
    except ValueError:
        return False
    if recorded is None:  # a record older than recordedAt: any failure is about it
        return True
    return finished is not None and finished > recorded


def _last_line(term: Mapping[str, Any]) -> str:
    lines = [ln.strip() for ln in (term.get("message") or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def failures(pods: Iterable[Mapping[str, Any]], revision: str, since: str) -> list[FetchFailure]:
    """Fetches of `revision`'s pods that exited 65 or 66 after `since` and have not succeeded since,
    oldest first."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(constants.LABEL_REVISION) != revision or meta.get("deletionTimestamp"):
            continue
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or ():
            if cs.get("name") != constants.CONTAINER_LOADER:
                continue
            # as observe.pod_trouble reads it: the run now, else the last one while it waits or retries
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            code = term.get("exitCode")
            if code in LOST_EXITS and _after(str(term.get("finishedAt") or ""), since):
                out.append(FetchFailure(str(meta.get("name", "")), int(code), str(term.get("finishedAt") or ""),
                                        _last_line(term)))
    return sorted(out, key=lambda f: (f.finished_at, f.pod))


def _condition_reason(previous: Mapping[str, Any]) -> str:
    return next((str(c.get("reason", "")) for c in previous.get("conditions") or () if c.get("type") == CONDITION),
                "")


def decide(previous: Mapping[str, Any], revision: str, artifact: Mapping[str, Any],
           pods: Iterable[Mapping[str, Any]]) -> BuildState | None:
    """What to do about `revision`'s recorded `artifact` given its pods: None (they may use it),
    a rebuild (drop the record, run the Job again), or the limit reached (keep it, say so)."""
    found = failures(pods, revision, str(artifact.get("recordedAt") or ""))
    if not found:
        return None
    last, done, key = found[-1], rebuilds(previous, revision), artifact.get("key")
    if done >= MAX_REBUILDS:
        return BuildState(Reason.REBUILD_LIMIT, f"revision {revision}: {last.describe()}; artifact {key} was rebuilt "
                                                f"{done} times already and is not rebuilt again for this revision: "
                                                "check the artifact store", artifact=artifact, rebuilds=done,
                          new_result=_condition_reason(previous) != Reason.REBUILD_LIMIT)
    return BuildState(Reason.REBUILD, f"revision {revision}: {last.describe()}; artifact {key} dropped from status, "
                                      f"building it again (rebuild {done + 1} of at most {MAX_REBUILDS})",
                      rebuilds=done + 1, rebuild=True, new_result=True)


def while_rebuilding(state: BuildState, count: int) -> dict[str, str]:
    """While the Job that builds a dropped artifact again runs (or retries), the condition keeps
    saying ArtifactRebuild, with the Job's own words: a user who looks after the pass that dropped
    the copy still sees why the revision builds again (not a plain Building)."""
    if state.reason != Reason.BUILDING:
        return {}
    return {"reason": Reason.REBUILD,
            "message": f"{state.message} (rebuild {count} of at most {MAX_REBUILDS}: pods found the stored "
                       "copy gone or corrupt)"}
