"""The activator's two API objects, both in its own namespace and both named (RBAC resourceNames):

- the demand Lease it patches: one annotation per model with requests waiting (demand_key), whose
  value says which model and when (the operator watches this one Lease: 0 -> 1 at once);
- the routes ConfigMap it watches: the models at zero, written by the operator (activator/routes.py).

The activator never lists or watches anything else, and never reads Services or pods: what it
may forward to is exactly what the operator wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import kubernetes

from .client import Conflict, Kube, NotFound

log = logging.getLogger(__name__)
DEMAND_PREFIX: Final = "demand.modeldeploy.io/"
ROUTES_KEY: Final = "routes.json"
_NAME_PART: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def demand_key(namespace: str, name: str) -> str:
    """The annotation of one model's demand: `demand.modeldeploy.io/<ns>.<name>`, or a hash when that
    is longer than an annotation name may be (63)."""
    part = f"{namespace}.{name}"
    if len(part) > 63 or not _NAME_PART.match(part):
        part = "h-" + hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:40]
    return DEMAND_PREFIX + part


def micro_time(t: dt.datetime | None = None) -> str:
    return (t or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def demand_value(namespace: str, name: str, at: dt.datetime | None = None, by: str = "") -> str:
    return json.dumps({"namespace": namespace, "name": name, "at": micro_time(at), "by": by}, sort_keys=True)


def parse_demand(annotations: Mapping[str, str] | None) -> dict[tuple[str, str], dt.datetime]:
    """{(namespace, name): last demand} from the demand Lease's annotations (bad entries skipped)."""
    out: dict[tuple[str, str], dt.datetime] = {}
    for key, value in (annotations or {}).items():
        if not key.startswith(DEMAND_PREFIX):
            continue
        try:
            doc = json.loads(value)
            at = dt.datetime.strptime(doc["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
            ns, name = str(doc["namespace"]), str(doc["name"])
        except (ValueError, KeyError, TypeError):
            continue
        if demand_key(ns, name) == key and ((ns, name) not in out or out[(ns, name)] < at):
            out[(ns, name)] = at
    return out


class DemandLease:
    """Writes demand into the named Lease (creating it when the chart's copy is missing)."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity

    def signal(self, models: list[tuple[str, str]], at: dt.datetime | None = None) -> None:
        """One merge patch for every model in `models` (raises on API errors other than a missing Lease)."""
        at = at or dt.datetime.now(dt.UTC)
        annotations = {demand_key(ns, n): demand_value(ns, n, at, self.identity) for ns, n in models}
        body = {"metadata": {"annotations": annotations},
                "spec": {"holderIdentity": self.identity, "renewTime": micro_time(at)}}
        try:
            self.kube.merge_patch("Lease", self.namespace, self.name, body)
        except NotFound:
            try:
                self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                  "metadata": {"name": self.name, "namespace": self.namespace,
                                               "annotations": annotations},
                                  "spec": {"holderIdentity": self.identity, "renewTime": micro_time(at)}})
            except Conflict:  # another replica created it meanwhile
                self.kube.merge_patch("Lease", self.namespace, self.name, body)

    def read(self) -> dict[tuple[str, str], dt.datetime]:
        lease = self.kube.get_or_none("Lease", self.namespace, self.name)
        return parse_demand(((lease or {}).get("metadata") or {}).get("annotations"))


def _lister(kube: Kube, kind: str) -> Callable[..., Any]:
    """The typed client's namespaced list call of `kind` (what kubernetes.watch streams)."""
    if kind == "ConfigMap":
        return kubernetes.client.CoreV1Api(kube.api).list_namespaced_config_map
    if kind == "Lease":
        return kubernetes.client.CoordinationV1Api(kube.api).list_namespaced_lease
    if kind == "EndpointSlice":
        return kubernetes.client.DiscoveryV1Api(kube.api).list_namespaced_endpoint_slice
    raise ValueError(f"no watch for {kind}")


def watch_objects(kube: Kube, kind: str, namespace: str, on_change: Callable[[list[dict[str, Any]]], None],
                  stop: threading.Event, *, field_selector: str = "", label_selector: str = "") -> None:
    """Call `on_change` with every version of the set of `kind` objects the selectors pick in
    `namespace` (all of them each time, [] when none) until `stop`.

    A list then a watch; after a broken stream or a 410 it lists again, so no version is missed
    for long. With a field selector on the name it needs only what RBAC resourceNames allows."""
    lister = _lister(kube, kind)
    selectors: dict[str, str] = {}
    if field_selector:
        selectors["field_selector"] = field_selector
    if label_selector:
        selectors["label_selector"] = label_selector
    while not stop.is_set():
        try:
            listed = lister(namespace, _preload_content=False, **selectors)
            doc = json.loads(listed.data)
            held = {(o.get("metadata") or {}).get("name"): o for o in doc.get("items") or []}
            on_change(list(held.values()))
            w = kubernetes.watch.Watch()
            for event in w.stream(lister, namespace, resource_version=doc["metadata"]["resourceVersion"],
                                  timeout_seconds=300, allow_watch_bookmarks=True, **selectors):
                if stop.is_set():
                    w.stop()
                    break
                kind_of = event.get("type")
                if kind_of == "ERROR":
                    break
                obj = event.get("raw_object") or {}
                if kind_of == "BOOKMARK" or not isinstance(obj, dict):
                    continue
                name = (obj.get("metadata") or {}).get("name")
                if kind_of == "DELETED":
                    held.pop(name, None)
                else:
                    held[name] = obj
                on_change(list(held.values()))
        except Exception as e:  # a broken stream, a 410, the API server away: list again shortly
            log.info("%s watch in %s restarting: %s", kind, namespace, e.__class__.__name__)
            stop.wait(1.0)
        else:
            time.sleep(0.1)


def watch_config_map(kube: Kube, namespace: str, name: str, on_change: Callable[[dict[str, Any] | None], None],
                     stop: threading.Event) -> None:
    """Call `on_change` with every version of one ConfigMap (None when absent or deleted) until `stop`
    (a list then a watch by field selector on the name: what RBAC resourceNames allows)."""
    watch_objects(kube, "ConfigMap", namespace, lambda found: on_change(found[0] if found else None), stop,
                  field_selector=f"metadata.name={name}")
