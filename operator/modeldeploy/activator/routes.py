"""Which model a request is for, and where its pods are (pure).

The operator publishes the models whose Service points at the activator (a JSON document, the
`routes.json` key of a ConfigMap in the activator's namespace; a file in tests):

    {"models": [{"namespace": "ml", "name": "digits", "model": "digits",
                 "clusterIPs": ["10.96.0.12"],
                 "http": "digits-stable.ml.svc:8000", "grpc": "digits-stable.ml.svc:8001"}]}

Only models in this table are ever forwarded to, and only to the backends the table names: the
Host header or the gRPC message chooses among registered models, never an address (no open proxy).

HTTP requests are matched by Host (`<svc>.<ns>[.svc[.<domain>]]`, a registered ClusterIP, or a
bare `<svc>` when one registered model has that name), then by the KServe v2 path's model name
(`/v2/models/<m>/...`) when that names one registered model. grpcio does not expose `:authority`
to servers, so gRPC requests are matched by an explicit `modeldeploy-target: <ns>/<name>`
metadata entry, else by the model name inside the request message (field 1 of every KServe v2
request that names a model) when exactly one registered model has it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

TARGET_METADATA: Final = "modeldeploy-target"
_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOSTPORT: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):([0-9]{1,5})$")
_V2_MODEL_PATH: Final = re.compile(r"^/v2/models/([^/?#]+)")
MAX_MODELS: Final = 10000


class RoutesError(ValueError):
    """The routes document is not valid (the activator keeps its previous table)."""


@dataclass(frozen=True)
class Route:
    """One model at zero: its ModelDeployment, Triton model name, ClusterIPs and pod backends."""

    namespace: str
    name: str
    model: str
    http: str  # host:port of an always-selecting Service of the model's pods (HTTP)
    grpc: str  # host:port, gRPC
    cluster_ips: tuple[str, ...] = ()
    # The addresses of the model's pods while they start (not yet Ready): probed and forwarded to
    # directly, on the Service's ports, so a held request does not wait for kube-proxy to program
    # the Service after the pod turns Ready. The Service stays the fallback.
    pods: tuple[str, ...] = ()
    # The model's Service points at its pods (not here): requests reach the activator only while
    # kube-proxy catches up. Its turning false is the model going to zero (again): the gate closes,
    # so no request is forwarded to where the last pods were.
    serving: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def same_backends(self, other: Route) -> bool:
        """Equal but for `pods` and `serving` (a gate lives on while pods come and go)."""
        return replace(self, pods=(), serving=False) == replace(other, pods=(), serving=False)

    def via_pod(self, address: str) -> Route:
        """This route with both backends on one pod's address (the Service's port numbers)."""
        host = f"[{address}]" if ":" in address else address
        return replace(self, http=f"{host}:{self.http.rsplit(':', 1)[1]}",
                       grpc=f"{host}:{self.grpc.rsplit(':', 1)[1]}", pods=(), serving=False)


@dataclass(frozen=True)
class RouteTable:
    """Every registered model, indexed the ways requests name them."""

    routes: tuple[Route, ...] = ()
    by_key: Mapping[str, Route] = field(default_factory=dict)
    by_ip: Mapping[str, Route] = field(default_factory=dict)
    by_name: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)
    by_model: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, routes: Iterable[Route]) -> RouteTable:
        rs = tuple(routes)
        by_name: dict[str, list[Route]] = {}
        by_model: dict[str, list[Route]] = {}
        by_ip: dict[str, Route] = {}
        for r in rs:
            by_name.setdefault(r.name, []).append(r)
            by_model.setdefault(r.model, []).append(r)
            for ip in r.cluster_ips:
                by_ip[_norm_ip(ip)] = r
        return cls(rs, {r.key: r for r in rs}, by_ip, {k: tuple(v) for k, v in by_name.items()},
                   {k: tuple(v) for k, v in by_model.items()})

    def get(self, namespace: str, name: str) -> Route | None:
        return self.by_key.get(f"{namespace}/{name}")


@dataclass(frozen=True)
class Resolution:
    """The route a request is for, or why there is none (`problem`, said to the client)."""

    route: Route | None
    problem: str = ""


def _norm_ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip("[]")))


def _check_backend(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _HOSTPORT.match(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise RoutesError(f"{where} must be HOST:PORT, got {value!r}")
    return value


def _check_label(where: str, value: Any, max_len: int = 63) -> str:
    if not isinstance(value, str) or not _LABEL.match(value) or len(value) > max_len:
        raise RoutesError(f"{where} must be a DNS label, got {value!r}")
    return value


def parse_routes(text: str | bytes) -> RouteTable:
    """The table from the routes document; RoutesError naming the first bad field."""
    try:
        doc = json.loads(text or "{}")
    except ValueError as e:
        raise RoutesError(f"routes are not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models", []), list):
        raise RoutesError("routes must be an object with a list `models`")
    items = doc.get("models", [])
    if len(items) > MAX_MODELS:
        raise RoutesError(f"at most {MAX_MODELS} models, got {len(items)}")
    routes, seen = [], set()
    for i, m in enumerate(items):
        w = f"models[{i}]"
        if not isinstance(m, dict):
            raise RoutesError(f"{w} must be an object")
        ns = _check_label(f"{w}.namespace", m.get("namespace"))
        name = _check_label(f"{w}.name", m.get("name"))
        model = m.get("model") or name
        if not isinstance(model, str) or not model or "/" in model or len(model) > 253:
            raise RoutesError(f"{w}.model must be a Triton model name, got {model!r}")
        ips = m.get("clusterIPs") or []
        if not isinstance(ips, list):
            raise RoutesError(f"{w}.clusterIPs must be a list")
        try:
            cluster_ips = tuple(_norm_ip(str(ip)) for ip in ips if ip and ip != "None")
        except ValueError as e:
            raise RoutesError(f"{w}.clusterIPs: {e}") from None
        pods = m.get("pods") or []
        if not isinstance(pods, list):
            raise RoutesError(f"{w}.pods must be a list")
        try:
            pod_ips = tuple(_norm_ip(str(ip)) for ip in pods)
        except ValueError as e:
            raise RoutesError(f"{w}.pods: {e}") from None
        serving = m.get("serving", False)
        if not isinstance(serving, bool):
            raise RoutesError(f"{w}.serving must be true or false")
        route = Route(ns, name, model, _check_backend(f"{w}.http", m.get("http")),
                      _check_backend(f"{w}.grpc", m.get("grpc")), cluster_ips, pod_ips, serving)
        if route.key in seen:
            raise RoutesError(f"{w}: {route.key} is listed twice")
        seen.add(route.key)
        routes.append(route)
    return RouteTable.of(routes)


def dump_routes(routes: Sequence[Route]) -> str:
    """The routes document for `routes` (what the operator writes; parse_routes reads it back)."""
    return json.dumps({"models": [
        {"namespace": r.namespace, "name": r.name, "model": r.model, "clusterIPs": list(r.cluster_ips),
         "http": r.http, "grpc": r.grpc, **({"pods": list(r.pods)} if r.pods else {}),
         **({"serving": True} if r.serving else {})}
        for r in sorted(routes, key=lambda r: r.key)]}, sort_keys=True)


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _unique(candidates: Sequence[Route], what: str) -> Resolution:
    if len(candidates) == 1:
        return Resolution(candidates[0])
    if not candidates:
        return Resolution(None, f"no model at zero matches {what}")
    keys = ", ".join(sorted(r.key for r in candidates))
    return Resolution(None, f"{what} matches several models at zero ({keys}): name the Service as <name>.<namespace>")


def v2_model_name(path: str) -> str | None:
    """The model of a KServe v2 path (`/v2/models/<m>/...`), URL-decoded; None for other paths."""
    from urllib.parse import unquote

    m = _V2_MODEL_PATH.match(path)
    return unquote(m.group(1)) if m else None


def resolve_http(table: RouteTable, host: str | None, path: str) -> Resolution:
    """The route of an HTTP request from its Host header and path."""
    h = _host_only(host or "")
    if h:
        try:
            ip = _norm_ip(h)
        except ValueError:
            ip = None
        if ip is not None:
            if ip in table.by_ip:
                return Resolution(table.by_ip[ip])
        else:
            parts = h.split(".")
            if len(parts) >= 2 and (len(parts) == 2 or parts[2] == "svc"):
                route = table.get(parts[1], parts[0])
                if route is not None:
                    return Resolution(route)
                return Resolution(None, f"no model at zero is served as {parts[0]}.{parts[1]}")
            if len(parts) == 1:
                found = _unique(table.by_name.get(parts[0], ()), f"host {parts[0]!r}")
                if found.route is not None or table.by_name.get(parts[0]):
                    return found
    model = v2_model_name(path)
    if model is not None:
        return _unique(table.by_model.get(model, ()), f"model {model!r}")
    return Resolution(None, f"no model at zero matches host {h!r} and path {path!r}")


# ---------------------------------------------------------------- gRPC


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


def first_string_field(message: bytes) -> str | None:
    """Field 1 of a protobuf message as a string, if it is length-delimited (KServe v2: the model name
    of ModelInferRequest, ModelReadyRequest, ModelMetadataRequest, ModelConfigRequest,
    ModelStatisticsRequest). None when absent or not a string."""
    i = 0
    try:
        while i < len(message):
            tag, i = _varint(message, i)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                _, i = _varint(message, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                size, i = _varint(message, i)
                if number == 1:
                    return message[i:i + size].decode("utf-8")
                i += size
            else:
                return None
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def resolve_grpc(table: RouteTable, metadata: Mapping[str, str], message: bytes | None) -> Resolution:
    """The route of a gRPC call from its `modeldeploy-target` metadata, else the model in its message."""
    target = metadata.get(TARGET_METADATA)
    if target:
        ns, _, name = target.partition("/")
        route = table.get(ns, name)
        return Resolution(route) if route else Resolution(None, f"no model at zero is {target!r}")
    model = first_string_field(message) if message else None
    if not model:
        return Resolution(None, f"the request names no model: set {TARGET_METADATA}: <namespace>/<name>")
    return _unique(table.by_model.get(model, ()), f"model {model!r}")
