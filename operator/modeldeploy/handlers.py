"""Thin kopf entry points: every watch event updates the cache and queues its ModelDeployment.

No change-detecting handlers (on.create/update/delete) and no timers or daemons are registered,
so kopf adds no finalizer and writes no progress or diff-base annotations: the ModelDeployment is
never mutated and deleting it works even while the operator is down (ownerReferences cascade).
Handlers never run a pass themselves: they feed the cache (kube/cache.py) and queue the model
(workqueue.py), so a burst of events for one model becomes one pass and watches never wait.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import constants, telemetry
from .kube.cache import WatchCache
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

# Set by operator_main before kopf starts; handlers only feed and queue.
CACHE: WatchCache | None = None
QUEUE: WorkQueue | None = None
OPERATOR_LABELS = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}


def _feed(kind: str, event: dict[str, Any]) -> None:
    obj = event.get("object")
    if CACHE is None or not isinstance(obj, dict):
        return
    obj.setdefault("kind", kind)  # initial-listing objects come without it
    if event.get("type") == "DELETED":
        CACHE.remove(kind, obj)
    else:
        CACHE.upsert(kind, obj)


def _queue(namespace: str | None, name: str | None) -> None:
    if QUEUE is not None and namespace and name:
        QUEUE.add(namespace, name)


@kopf.on.event(constants.GROUP, constants.VERSION, constants.PLURAL)
def modeldeployment_event(event: dict[str, Any], namespace: str | None, name: str | None, **_: Any) -> None:
    _feed(constants.KIND, event)
    if event.get("type") == "DELETED":
        if namespace and name:
            telemetry.record_phase(namespace, name, None)
        return
    _queue(namespace, name)


def _child(kind: str):  # type: ignore[no-untyped-def]
    def handler(event: dict[str, Any], labels: dict[str, str], namespace: str | None, **_: Any) -> None:
        _feed(kind, event)
        _queue(namespace, labels.get(constants.LABEL_NAME))
    handler.__name__ = f"{kind.lower()}_event"
    return handler


# Every child kind the operator owns: a change (a user's edit, a deletion, a pod becoming Ready)
# queues its model; the pass then heals drift or records progress.
kopf.on.event("apps", "v1", "deployments", labels=OPERATOR_LABELS,
              id="deployment-event")(_child("Deployment"))
kopf.on.event("", "v1", "pods", labels=OPERATOR_LABELS,
              id="pod-event")(_child("Pod"))
kopf.on.event("", "v1", "services", labels=OPERATOR_LABELS,
              id="service-event")(_child("Service"))
kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OPERATOR_LABELS,
              id="poddisruptionbudget-event")(_child("PodDisruptionBudget"))
kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OPERATOR_LABELS,
              id="networkpolicy-event")(_child("NetworkPolicy"))


def _job_event(event: dict[str, Any], labels: dict[str, str], namespace: str | None, **_: Any) -> None:
    """A Job's change (a build finishing) queues its model; Jobs are not cached (read only while one runs)."""
    _queue(namespace, labels.get(constants.LABEL_NAME))


def watch_jobs() -> None:
    """Register the Job watch: only with an artifact store, where a build's end must start the rollout."""
    kopf.on.event("batch", "v1", "jobs", labels=OPERATOR_LABELS, id="job-event")(_job_event)


def watch_endpointslices() -> None:
    """Register the EndpointSlice watch: only with the activator on (a model at zero has ours, and
    going back to its pods waits for the controller's to list a Ready pod)."""
    kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels=OPERATOR_LABELS,
                  id="endpointslice-event")(_child("EndpointSlice"))
