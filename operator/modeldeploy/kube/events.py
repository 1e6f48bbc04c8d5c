"""Kubernetes Events for the operator's decisions, attached to the ModelDeployment."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from .. import constants
from .client import Kube

log = logging.getLogger(__name__)

COMPONENT = "modeldeploy-operator"


def post(kube: Kube, owner: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
    """Record one decision as an Event (failures to post are logged, never fatal)."""
    meta = owner["metadata"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"],
                           "resourceVersion": meta.get("resourceVersion", "")},
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": now,
        "action": reason,
        "count": 1,
    }
    try:
        kube.create(event)
    except Exception as e:  # an Event is a courtesy; the decision itself already happened
        log.warning("could not post event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)
