"""What a Job's pod says about one of its containers (pure): shared by the build and validation Jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    """The container's terminated state, or its last one (a restarted container), if it has one."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated")
            if term:
                return term
    return None


def waiting_reason(pods: Iterable[Mapping[str, Any]], *, ignore: tuple[str, ...] = ()) -> str:
    """Why a pod does not run (ImagePullBackOff, a missing Secret, Unschedulable ...), or "".

    `ignore`: waiting reasons that say nothing yet (ContainerCreating while a build starts)."""
    for pod in pods:
        status = pod.get("status") or {}
        # init containers first (a sidecar that cannot start keeps the main container waiting)
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ignore:
                return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
    return ""
