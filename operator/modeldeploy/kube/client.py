"""A small typed REST layer over the official client: server-side apply, reads, status, deletes.

Generic over kinds through a fixed table, so no discovery round-trips at start-up, and every
write goes through one place where it can be counted and skipped when nothing changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .. import constants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def base(self, namespace: str | None) -> str:
        group = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{group}/namespaces/{namespace}/{self.plural}"
        return f"{group}/{self.plural}"


KINDS: dict[str, Kind] = {
    "Deployment": Kind("apps/v1", "deployments"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "Event": Kind("v1", "events"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "Job": Kind("batch/v1", "jobs"),
    "HTTPRoute": Kind("gateway.networking.k8s.io/v1", "httproutes"),
    "ServiceMonitor": Kind("monitoring.coreos.com/v1", "servicemonitors"),
    "Lease": Kind("coordination.k8s.io/v1", "leases"),
    "ConfigMap": Kind("v1", "configmaps"),
    "EndpointSlice": Kind("discovery.k8s.io/v1", "endpointslices"),
    "Endpoints": Kind("v1", "endpoints"),
    constants.KIND: Kind(constants.API_VERSION, constants.PLURAL),
    "CustomResourceDefinition": Kind("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False),
}


def without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


class NotFound(Exception):
    """The object does not exist."""


class Conflict(Exception):
    """A precondition or resourceVersion did not hold; re-read and retry."""


class Forbidden(Exception):
    """RBAC refused the request: the operator's role lacks a rule (not a missing API)."""


class NamespaceTerminating(Forbidden):
    """The namespace is being deleted: nothing new may be created there, and nothing needs to be."""


class WriteCounter:
    """Counts the writes this process sends (the operator's own metric; tests use the audit log)."""

    def __init__(self, on_write: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_write = on_write
        self._mine = threading.local()
        self.by_verb: dict[str, int] = {}

    def add(self, verb: str) -> None:
        with self._lock:
            self.by_verb[verb] = self.by_verb.get(verb, 0) + 1
        self._mine.count = self.of_this_thread() + 1
        if self._on_write is not None:
            self._on_write(verb)

    def of_this_thread(self) -> int:
        """Writes sent by the calling thread: a pass's own, not another worker's or the election's."""
        return int(getattr(self._mine, "count", 0))


def load_api_client(kubeconfig: str | None = None, connections: int = 32) -> kubernetes.client.ApiClient:
    """In-cluster credentials when running as a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config).

    `connections`: the pool kept open to the API server. The client's default (5 per CPU: 10 on a
    2-core node) is below the operator's concurrent callers (8 pass workers, the election, the
    ticker, the resync); a full pool discards connections, and every new one costs a TLS
    handshake on both sides."""
    config = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=config)
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    config.connection_pool_maxsize = connections
    return kubernetes.client.ApiClient(configuration=config)


class Kube:
    """Thin, thread-safe API access; every method maps to exactly one request."""

    def __init__(self, api: kubernetes.client.ApiClient, on_write: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.writes = WriteCounter(on_write)

    def _call(self, method: str, path: str, *, body: Any = None, query: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> Any:
        _, url, headers, _, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"])
        # The REST layer JSON-encodes bodies of json content types itself; others go as text.
        payload = body if body is None or "json" in content_type else json.dumps(body)
        resp = self.api.call_api(method, url, header_params=headers, body=payload, _request_timeout=30)
        raw = resp.read()
        if resp.status == 404:
            raise NotFound(path)
        if resp.status == 409:
            raise Conflict(f"{path}: {raw[:300]!r}")
        if resp.status == 403 and b"because it is being terminated" in raw:
            raise NamespaceTerminating(f"{method} {path}: namespace is being deleted")
        if resp.status == 403:
            raise Forbidden(f"{method} {path}: {raw[:300].decode(errors='replace')}")
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=f"{method} {path}: {raw[:500].decode(errors='replace')}")
        return json.loads(raw) if raw else None

    # --- reads -----------------------------------------------------------------------------
    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self._call("GET", f"{KINDS[kind].base(namespace)}/{name}")

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            return None

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return self.list_with_version(kind, namespace, labels)[0]

    def list_with_version(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None,
                          ) -> tuple[list[dict[str, Any]], int | None]:
        """The items and the list's resourceVersion (what a cache filled from it is as new as).

        Items of a LIST carry no kind; it is set here, so a listed object looks like a watched one."""
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        try:
            result = self._call("GET", KINDS[kind].base(namespace), query=query)
        except NotFound:
            return [], None  # the kind is not installed on this cluster
        items = list(result.get("items", []))
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", KINDS[kind].api_version)
        raw = (result.get("metadata") or {}).get("resourceVersion")
        return items, int(raw) if raw and str(raw).isdigit() else None

    def kind_installed(self, kind: str, namespace: str | None = None) -> bool:
        """Whether an optional API (Gateway API, Prometheus Operator) exists on this cluster.

        Asked in `namespace` (a namespaced operator may list only there). Raises Forbidden when the
        API exists but RBAC refuses it: that is missing permissions, not a missing API.
        """
        try:
            self._call("GET", KINDS[kind].base(namespace), query={"limit": "1"})
            return True
        except NotFound:
            return False

    # --- writes ----------------------------------------------------------------------------
    def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply as field manager `modeldeploy`: we own exactly the fields we send.

        A field set to None is left out (so apply removes it, if we owned it): builders say "must be
        absent" that way, which the drift check (planning/drift.py) compares too."""
        meta = obj["metadata"]
        kind = KINDS[obj["kind"]]
        self.writes.add("apply")
        return self._call("PATCH", f"{kind.base(meta.get('namespace'))}/{meta['name']}", body=without_none(obj),
                          query={"fieldManager": constants.FIELD_MANAGER, "force": str(force).lower()},
                          content_type="application/apply-patch+yaml")

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status subresource (optimistic when resource_version is given)."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self.writes.add("patch_status")
        return self._call("PATCH", f"{KINDS[kind].base(namespace)}/{name}/status", body=body,
                          content_type="application/merge-patch+json")

    def remove_annotation(self, kind: str, namespace: str, name: str, key: str, resource_version: str) -> None:
        """Drop one annotation a user set as a one-shot command, and nothing else (optimistic)."""
        self.writes.add("patch")
        self._call("PATCH", f"{KINDS[kind].base(namespace)}/{name}",
                   body={"metadata": {"annotations": {key: None}, "resourceVersion": resource_version}},
                   content_type="application/merge-patch+json")

    def merge_patch(self, kind: str, namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (no precondition: for keys only this writer sets, such as one annotation)."""
        self.writes.add("patch")
        return self._call("PATCH", f"{KINDS[kind].base(namespace)}/{name}", body=dict(body),
                          content_type="application/merge-patch+json")

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Set replicas through the scale subresource: touches nothing else of the object."""
        self.writes.add("scale")
        return self._call("PATCH", f"{KINDS[kind].base(namespace)}/{name}/scale",
                          body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete, only the exact object we decided on (uid precondition), children in background."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        self.writes.add("delete")
        with contextlib.suppress(NotFound):
            self._call("DELETE", f"{KINDS[kind].base(namespace)}/{name}", body=body)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; its metadata.resourceVersion makes it optimistic (409 on a race)."""
        meta = obj["metadata"]
        self.writes.add("update")
        return self._call("PUT", f"{KINDS[obj['kind']].base(meta.get('namespace'))}/{meta['name']}", body=obj)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self.writes.add("create")
        return self._call("POST", KINDS[obj["kind"]].base(meta.get("namespace")), body=obj)
