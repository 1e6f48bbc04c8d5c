"""Thin kopf entry points: every event or timer tick becomes one call to the reconciler.

No change-detecting handlers (on.create/update/delete) and no timers or daemons are registered,
so kopf adds no finalizer and writes no progress or diff-base annotations: the ModelDeployment is
never mutated and deleting it works even while the operator is down (ownerReferences cascade).
The periodic drift-healing pass lives in resync.py.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import constants
from .kube.client import Conflict
from .reconciler import Reconciler

log = logging.getLogger(__name__)

# Set by operator_main before kopf starts; handlers only delegate to it.
RECONCILER: Reconciler | None = None
OPERATOR_LABELS = {constants.LABEL_MANAGED_BY: constants.MANAGED_BY}


def _reconcile(namespace: str | None, name: str | None) -> None:
    if RECONCILER is None or not namespace or not name:
        return
    try:
        RECONCILER.request(namespace, name)
    except Conflict as e:
        raise kopf.TemporaryError(f"conflict, retrying: {e}", delay=1) from e


@kopf.on.event(constants.GROUP, constants.VERSION, constants.PLURAL)
def modeldeployment_event(event: dict[str, Any], namespace: str | None, name: str | None, **_: Any) -> None:
    if event.get("type") == "DELETED":
        from . import telemetry

        if namespace and name:
            telemetry.record_phase(namespace, name, None)
        return
    _reconcile(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels=OPERATOR_LABELS)
def deployment_event(labels: dict[str, str], namespace: str | None, **_: Any) -> None:
    _reconcile(namespace, labels.get(constants.LABEL_NAME))


@kopf.on.event("", "v1", "pods", labels=OPERATOR_LABELS)
def pod_event(labels: dict[str, str], namespace: str | None, **_: Any) -> None:
    _reconcile(namespace, labels.get(constants.LABEL_NAME))


@kopf.on.event("", "v1", "services", labels=OPERATOR_LABELS)
def service_event(event: dict[str, Any], labels: dict[str, str], namespace: str | None, **_: Any) -> None:
    if event.get("type") == "DELETED":  # heal deleted Services at once, not at the next tick
        _reconcile(namespace, labels.get(constants.LABEL_NAME))

