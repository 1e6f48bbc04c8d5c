"""Summarise live Deployments and Pods into per-revision facts the decisions need (pure).

Pod trouble comes in two kinds, told apart here once so every decision treats them alike:
- a **failure** retrying cannot fix (the loader's checksum, format, conversion or gate errors, an
  invalid image name, Triton refusing the model, a crash loop of a pod never Ready): the revision
  fails once, with the loader's or Triton's message;
- **trouble** that may heal (a fetch that failed after its retries, the store unreachable, an image
  not there yet, an OOM kill or crash, a missing Secret): the kubelet retries with backoff, the
  operator shows the real reason (OOMKilled kept) in a condition and never marks the revision failed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import constants

LOADER_CONTAINER = constants.CONTAINER_LOADER
SERVING_CONTAINER = constants.CONTAINER_SERVING
# Exit code of a loader failure worth retrying (sysexits.h EX_TEMPFAIL; loader/errors.py).
LOADER_TRANSIENT_EXIT = 75
# Exits of `python -m modeldeploy.artifact fetch` (a built revision's init container) that are not
# the revision's fault (docs/artifacts.md): the kubelet retries the init container.
ARTIFACT_FETCH_TROUBLE = {65: "ArtifactCorrupt", 66: "ArtifactNotBuilt", 77: "ArtifactStoreRefused"}
# A serving container that crashed this often without its pod ever being Ready is not going to start.
CRASH_LOOP_LIMIT = 5
_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"}
_CONFIG_WAITING = {"CreateContainerConfigError", "CreateContainerError"}  # a Secret or ConfigMap may appear
_NEVER_WORKS = {"InvalidImageName"}
# What Triton prints when the model repository it was given cannot be served (the same bytes every start).
_TRITON_MODEL_REFUSED = ("failed to load", "failed to stat file", "unexpected inference input",
                         "unable to find backend")


@dataclass(frozen=True)
class PodTrouble:
    """Why a pod does not serve: `failure` when retrying cannot help, else `trouble` (may heal)."""

    failure: str = ""
    trouble: str = ""
    reason: str = ""  # a CamelCase reason for conditions: OOMKilled, ImagePullBackOff, FetchRetrying, ...


@dataclass(frozen=True)
class RevisionState:
    """One revision's Deployment and pods, as observed."""

    revision: str
    deployment: str
    uid: str
    spec_replicas: int
    replicas: int
    ready: int
    model_version: str
    load_failure: str = ""  # a failure retrying cannot fix (see PodTrouble)
    unschedulable: str = ""  # the scheduler's reason when pods cannot be placed
    oldest_starting_seconds: float = 0.0  # longest a not-Ready pod's serving container has been running
    trouble: str = ""  # trouble that may heal, with its real reason
    trouble_reason: str = ""
    crash_loop: bool = False  # load_failure only says its pods crash-looped (not a load error)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _last_line(term: Mapping[str, Any]) -> str:
    msg = (term.get("message") or "").strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _terminated(cs: Mapping[str, Any], *, history: bool) -> Mapping[str, Any] | None:
    """The container's failed run that matters now: the current one, or the last one while it waits
    to be restarted. Once running again, the last failure still matters while the pod has not
    recovered (`history`: a loader that has not succeeded yet, a serving container whose pod is not
    Ready again); after that it is history."""
    state = cs.get("state", {})
    if "running" in state and not history:
        return None
    term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return term if term and term.get("exitCode", 0) != 0 else None


def _waiting(name: str, cs: Mapping[str, Any]) -> PodTrouble | None:
    waiting = (cs.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason", "")
    text = f"{name}: {reason}: {waiting.get('message', '')}".strip().rstrip(":")
    if reason in _NEVER_WORKS:
        return PodTrouble(failure=text, reason=reason)
    if reason in _PULL_WAITING or reason in _CONFIG_WAITING:
        return PodTrouble(trouble=f"{text} (retrying)", reason=reason)
    return None


def _loader_exit(name: str, term: Mapping[str, Any], restarts: int) -> PodTrouble:
    code = term.get("exitCode")
    detail = _last_line(term) or f"exit code {code}"
    if term.get("reason") == "OOMKilled":
        return PodTrouble(trouble=f"{name}: OOMKilled (exit code {code}, {restarts} restart(s)); retrying",
                          reason="OOMKilled")
    if code == LOADER_TRANSIENT_EXIT:
        return PodTrouble(trouble=f"{name}: {detail} (retrying)", reason="FetchRetrying")
    if code in ARTIFACT_FETCH_TROUBLE:
        return PodTrouble(trouble=f"{name}: {detail} (retrying)", reason=ARTIFACT_FETCH_TROUBLE[code])
    if code in (137, 143) and not _last_line(term):
        return PodTrouble(trouble=f"{name}: killed (exit code {code}); retrying", reason="ContainerKilled")
    return PodTrouble(failure=f"{name}: {detail}", reason="LoadFailed")


def _serving_exit(name: str, term: Mapping[str, Any], restarts: int) -> PodTrouble:
    code = term.get("exitCode")
    detail = _last_line(term) or f"exit code {code}"
    if term.get("reason") == "OOMKilled":
        return PodTrouble(trouble=f"{name}: OOMKilled (exit code {code}, {restarts} restart(s))",
                          reason="OOMKilled")
    if any(marker in detail.lower() for marker in _TRITON_MODEL_REFUSED):
        return PodTrouble(failure=f"{name}: {detail}", reason="LoadFailed")
    if restarts >= CRASH_LOOP_LIMIT:
        return PodTrouble(failure=f"{name}: crashed {restarts} times without becoming Ready: {detail}",
                          reason="CrashLoopBackOff")
    return PodTrouble(trouble=f"{name}: exited ({detail}), restart {restarts}", reason="ContainerCrashed")


def pod_trouble(pod: Mapping[str, Any]) -> PodTrouble:
    """Why this pod does not serve its model; empty when it is fine or still starting."""
    status = pod.get("status", {})
    ready = pod_ready(pod)
    for cs in status.get("initContainerStatuses", []):
        name = cs.get("name", "")
        found = _waiting(name, cs)
        if found is None and (term := _terminated(cs, history=True)) is not None:
            found = _loader_exit(name, term, int(cs.get("restartCount", 0)))
        if found is not None:
            return found
    for cs in status.get("containerStatuses", []):
        name = cs.get("name", "")
        found = _waiting(name, cs)
        if found is None and (term := _terminated(cs, history=not ready)) is not None:
            found = _serving_exit(name, term, int(cs.get("restartCount", 0)))
        if found is not None:
            # A pod that is Ready serves: a sidecar's trouble or one restart is not a model failure.
            return PodTrouble(trouble=found.failure or found.trouble, reason=found.reason) if ready else found
    return PodTrouble()


def pod_load_failure(pod: Mapping[str, Any]) -> str:
    """The reason a pod can never serve its model, or '' (see pod_trouble)."""
    return pod_trouble(pod).failure


def pod_unschedulable(pod: Mapping[str, Any]) -> str:
    for cond in pod.get("status", {}).get("conditions", []):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("message") or cond.get("reason", "Unschedulable")
    return ""


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def serving_started_at(pod: Mapping[str, Any]) -> dt.datetime | None:
    """When the serving container's current run started (None before it runs)."""
    for cs in pod.get("status", {}).get("containerStatuses", []):
        if cs.get("name") == SERVING_CONTAINER:
            return _parse_time(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
    return None


def summarise(deployments: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
              now: dt.datetime) -> dict[str, RevisionState]:
    """Per revision: replica counts from the Deployment, failures and trouble from its pods."""
    pods_by_rev: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        rev = pod.get("metadata", {}).get("labels", {}).get(constants.LABEL_REVISION)
        if rev:
            pods_by_rev.setdefault(rev, []).append(pod)
    out: dict[str, RevisionState] = {}
    for d in deployments:
        meta = d["metadata"]
        labels = meta.get("labels", {})
        rev = labels.get(constants.LABEL_REVISION)
        if not rev or meta.get("deletionTimestamp"):
            continue
        rev_pods = [p for p in pods_by_rev.get(rev, []) if not p["metadata"].get("deletionTimestamp")]
        troubles = [pod_trouble(p) for p in rev_pods]
        failure = next((t for t in troubles if t.failure), None)
        passing = next((t for t in troubles if t.trouble), None)
        unsched = next((u for u in map(pod_unschedulable, rev_pods) if u), "")
        starting = [(now - started).total_seconds() for p in rev_pods
                    if not pod_ready(p) and (started := serving_started_at(p)) is not None]
        st = d.get("status", {})
        out[rev] = RevisionState(
            revision=rev, deployment=meta["name"], uid=meta.get("uid", ""),
            spec_replicas=int(d.get("spec", {}).get("replicas", 0) or 0),
            replicas=int(st.get("replicas", 0) or 0),
            ready=sum(1 for p in rev_pods if pod_ready(p)),
            model_version=labels.get(constants.LABEL_APP_VERSION, ""),
            load_failure=failure.failure if failure else "", unschedulable=unsched,
            crash_loop=failure is not None and failure.reason == "CrashLoopBackOff",
            oldest_starting_seconds=max(starting, default=0.0),
            trouble=passing.trouble if passing else "", trouble_reason=passing.reason if passing else "",
        )
    return out
