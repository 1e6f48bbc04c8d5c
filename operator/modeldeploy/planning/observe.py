"""Summarise live Deployments and Pods into per-revision facts the decisions need (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import constants

LOADER_CONTAINER = "model-loader"
SERVING_CONTAINER = "triton"
_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError"}


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
    load_failure: str = ""  # the loader's / Triton's reason when the model cannot load
    unschedulable: str = ""  # the scheduler's reason when pods cannot be placed
    oldest_unready_seconds: float = 0.0


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def pod_load_failure(pod: Mapping[str, Any]) -> str:
    """The reason a pod cannot serve its model, or '' if it is fine or still starting."""
    status = pod.get("status", {})
    for kind, statuses in (("init", status.get("initContainerStatuses", [])),
                           ("main", status.get("containerStatuses", []))):
        for cs in statuses:
            state, last = cs.get("state", {}), cs.get("lastState", {})
            term = state.get("terminated") or last.get("terminated")
            waiting = state.get("waiting") or {}
            name = cs.get("name", "")
            if waiting.get("reason") in _PULL_FAILURES:
                return f"{name}: {waiting['reason']}: {waiting.get('message', '')}".strip()
            if term and term.get("exitCode", 0) != 0:
                msg = (term.get("message") or term.get("reason") or "").strip()
                lines = [ln for ln in msg.splitlines() if ln.strip()]
                detail = lines[-1] if lines else f"exit code {term.get('exitCode')}"
                return f"{name}: {detail}"
            if kind == "main" and waiting.get("reason") == "CrashLoopBackOff":
                return f"{name}: CrashLoopBackOff"
    return ""


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


def summarise(deployments: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
              now: dt.datetime) -> dict[str, RevisionState]:
    """Per revision: replica counts from the Deployment, failures from its pods."""
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
        failure = next((f for f in map(pod_load_failure, rev_pods) if f), "")
        unsched = next((u for u in map(pod_unschedulable, rev_pods) if u), "")
        unready_ages = [
            (now - created).total_seconds()
            for p in rev_pods if not pod_ready(p) and (created := _parse_time(p["metadata"].get("creationTimestamp")))
        ]
        st = d.get("status", {})
        out[rev] = RevisionState(
            revision=rev, deployment=meta["name"], uid=meta.get("uid", ""),
            spec_replicas=int(d.get("spec", {}).get("replicas", 0) or 0),
            replicas=int(st.get("replicas", 0) or 0),
            ready=sum(1 for p in rev_pods if pod_ready(p)),
            model_version=labels.get(constants.LABEL_APP_VERSION, ""),
            load_failure=failure, unschedulable=unsched,
            oldest_unready_seconds=max(unready_ages, default=0.0),
        )
    return out
