"""The leader's coordination.k8s.io Lease: read, take, renew, release, and watch it.

The standby replica follows the Lease with a watch (no polling: at rest it sends nothing), the
leader renews it with an optimistic PUT built from its last write (no GET before each renewal).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes

from .client import Conflict, Kube, NotFound

log = logging.getLogger(__name__)


def micro_time(t: dt.datetime | None = None) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds."""
    return (t or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseClient:
    """One named Lease in one namespace."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    def get(self) -> dict[str, Any] | None:
        return self.kube.get_or_none("Lease", self.namespace, self.name)

    def create(self, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """The Lease with `spec`, or None when another replica created it first."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": dict(spec)}
        try:
            return self.kube.create(body)
        except Conflict:
            return None

    def update(self, lease: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """PUT `spec` over `lease` (its resourceVersion is the precondition); None when it lost."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": dict(spec)}
        try:
            return self.kube.replace(body)
        except (Conflict, NotFound):
            return None

    def watch(self, on_change: Callable[[dict[str, Any] | None], None], stop: threading.Event) -> None:
        """Call `on_change` with every version of the Lease (None when deleted) until `stop`."""
        coordination = kubernetes.client.CoordinationV1Api(self.kube.api)
        while not stop.is_set():
            try:
                w = kubernetes.watch.Watch()
                for event in w.stream(coordination.list_namespaced_lease, self.namespace,
                                      field_selector=f"metadata.name={self.name}", timeout_seconds=300,
                                      allow_watch_bookmarks=True):
                    if stop.is_set():
                        w.stop()
                        break
                    if event.get("type") == "BOOKMARK":
                        continue
                    raw = event.get("raw_object")
                    on_change(None if event.get("type") == "DELETED" else raw)
            except Exception as e:  # a broken stream or a 410: start again from the present
                log.debug("lease watch restarting: %s", e)
                stop.wait(1.0)
            else:
                time.sleep(0.1)
