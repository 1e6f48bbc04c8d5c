"""The Tuned condition: what deploy-time tuning chose for the current revision, with the numbers (pure).

The build records tuning's summary in status.revisions[].artifact.tuning (planning/build.py); this
turns it into one condition a user reads with `kubectl describe`:
- Tuned=True/Tuned: a configuration beat the default; settings and default vs chosen.
- Tuned=True/DefaultKept: nothing beat the default generated configuration by enough to count.
- Tuned=False/LatencyBoundNotMet: no configuration met maxP99; the closest one is served (with
  whenBoundNotMet: Fail the build fails instead, and ArtifactReady says so).
- Tuned=Unknown/Tuning: the build Job is measuring.
- Tuned=False/TuningNeedsArtifactStore: tuning runs only in build Jobs (the chart's artifacts.store);
  without a store every pod runs its own loader, and a sweep in every pod would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .build import BuildState

CONDITION: Final = "Tuned"


class Reason:
    TUNED = "Tuned"
    DEFAULT_KEPT = "DefaultKept"
    BOUND_NOT_MET = "LatencyBoundNotMet"
    TUNING = "Tuning"
    BUILD_FAILED = "BuildFailed"
    NEEDS_STORE = "TuningNeedsArtifactStore"
    NO_RECORD = "NoTuningRecord"


def _at(p: Mapping[str, Any]) -> str:
    return f"{p.get('throughput', 0):g}/s p99 {p.get('p99Ms', 0):g}ms"


def _settings(s: Mapping[str, Any]) -> str:
    parts = [f"maxBatchSize {s.get('maxBatchSize')}", f"instances {s.get('instances')}"]
    db = s.get("dynamicBatching")
    if isinstance(db, Mapping):
        pref = ",".join(str(x) for x in db.get("preferredBatchSizes") or []) or "none"
        parts.append(f"dynamic batching (delay {db.get('maxQueueDelayMicroseconds')}us, preferred {pref})")
    else:
        parts.append("no dynamic batching")
    for key, name in (("intraOpThreads", "intra-op threads"), ("interOpThreads", "inter-op threads"),
                      ("accelerator", "accelerator")):
        if s.get(key):
            parts.append(f"{name} {s[key]}")
    return ", ".join(parts)


def summary_text(t: Mapping[str, Any]) -> str:
    """Default vs chosen at one concurrency, and what the sweep cost."""
    d, c = t.get("default") or {}, t.get("tuned") or {}
    ratio = (c.get("throughput", 0) / d["throughput"]) if d.get("throughput") else 0.0
    return (f"at concurrency {c.get('concurrency')}: {_at(c)} vs the default's {_at(d)} ({ratio:.2f}x throughput); "
            f"{t.get('candidates')} candidates in {t.get('seconds')}s of a {t.get('budgetSeconds')}s budget")


def condition(requested: bool, build: BuildState | None, revision: str) -> tuple[bool | None, str, str] | None:
    """(status, reason, message) of the Tuned condition, or None when tuning was not asked for."""
    if not requested:
        return None
    if build is None:
        return False, Reason.NEEDS_STORE, ("spec.model.optimization.tune needs the chart's artifacts.store (tuning "
                                           "runs in the build Job): served with the default generated configuration")
    if build.failed:
        return False, Reason.BUILD_FAILED, f"revision {revision}: the build failed: {build.failure}"
    if build.artifact is None:
        return None, Reason.TUNING, f"revision {revision}: the build Job tunes the configuration"
    t = build.artifact.get("tuning")
    if not isinstance(t, Mapping):
        return False, Reason.NO_RECORD, f"revision {revision}: artifact {build.artifact.get('key')} records no tuning"
    settings = _settings(t.get("settings") or {})
    if not t.get("boundMet", True):
        why = t.get("message") or f"no configuration met maxP99 {t.get('maxP99Ms')}ms"
        return False, Reason.BOUND_NOT_MET, f"revision {revision}: {why}; serving the closest ({settings}) " \
                                            f"{summary_text(t)}"
    if t.get("isDefault"):
        return True, Reason.DEFAULT_KEPT, (f"revision {revision}: no configuration beat the default generated one "
                                           f"({settings}) {summary_text(t)}")
    return True, Reason.TUNED, f"revision {revision}: serving {settings} {summary_text(t)}"
