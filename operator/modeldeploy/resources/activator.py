"""What points a model at zero to the activator (pure): its route, its Service, its EndpointSlice.

A Service's selector cannot reach pods in another namespace, so while a model has no Ready pod its
`<name>` Service has **no selector**, and the operator writes an EndpointSlice for it listing the
activator's Ready pods (read from the activator Service's own EndpointSlices). The slice carries
`kubernetes.io/service-name: <name>` (kube-proxy joins it to the Service by that label) and its own
`endpointslice.kubernetes.io/managed-by`, so the EndpointSlice controller leaves it alone. Switching
back is the reverse: the selector returns (the controller makes its slices) and ours is deleted, or
kube-proxy would send part of the traffic to the activator still.

The EndpointSlice controller does not delete its own slices when a selector is removed (it only
stops updating them: kube-proxy would keep sending traffic to the pods listed there as they go),
so going to the activator also deletes the controller's slices of the Service (`slices_to_delete`).
Measured against a real kube-apiserver: tests/integration/test_activator_switch.py.

Ports are matched by name: the slice maps `http` and `grpc` to the activator's ports; the
`metrics` port gets no endpoints at zero (there is no Triton to scrape).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any, Final

from .. import constants as c
from ..activator.routes import Route
from . import labels
from .services import service_ports

ENDPOINTSLICE_MANAGED_BY: Final = "operator.modeldeploy.io"  # a label value: no "/" (the API server refuses it)
LABEL_SERVICE_NAME: Final = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY: Final = "endpointslice.kubernetes.io/managed-by"
ACTIVATOR_HTTP_PORT: Final = 8000
ACTIVATOR_GRPC_PORT: Final = 8001


def endpointslice_name(md_name: str) -> str:
    return f"{md_name}-activator"


def route_for(md_name: str, namespace: str, model_name: str, cluster_ips: Sequence[str],
              stable_cluster_ip: str | None = None, pods: Sequence[str] = (), serving: bool = False) -> Route:
    """The activator's route for a model at zero: its ClusterIPs (clients that use the address),
    and its pods through `<name>-stable` (by ClusterIP when known: no DNS lookup in the cold path),
    plus the addresses of its starting pods (probed and forwarded to directly) and whether its
    Service points at its pods now (`serving`: its turning false closes the activator's gate)."""
    host = labels.stable_service_name(md_name) + f".{namespace}.svc"
    if stable_cluster_ip and stable_cluster_ip != "None":
        host = f"[{stable_cluster_ip}]" if ":" in stable_cluster_ip else stable_cluster_ip
    ips = tuple(ip for ip in cluster_ips if ip and ip != "None")
    return Route(namespace, md_name, model_name, f"{host}:{c.PORT_HTTP}", f"{host}:{c.PORT_GRPC}", ips,
                 tuple(sorted(set(pods))), serving)


def build_activator_service(md_name: str, namespace: str, owner_uid: str) -> dict[str, Any]:
    """`<name>` while the model is at zero: the same ports, no selector (the EndpointSlice below)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": labels.object_meta(md_name, namespace, md_name, owner_uid, labels.common_labels(md_name)),
        # No selector: None says "absent" to the drift check, and apply leaves it out (removing ours).
        "spec": {"type": "ClusterIP", "selector": None, "ports": service_ports()},
    }


def activator_addresses(slices: Iterable[dict[str, Any]]) -> list[str]:
    """The Ready activator pods' addresses, from the activator Service's EndpointSlices (sorted, unique)."""
    out: set[str] = set()
    for s in slices:
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            out.update(a for a in ep.get("addresses") or [])
    return sorted(out, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def build_activator_endpointslices(md_name: str, namespace: str, owner_uid: str,
                                   addresses: Sequence[str]) -> list[dict[str, Any]]:
    """One EndpointSlice per address family of the activator's Ready pods (none: empty list)."""
    by_family: dict[str, list[str]] = {}
    for a in addresses:
        by_family.setdefault("IPv6" if ipaddress.ip_address(a).version == 6 else "IPv4", []).append(a)
    out = []
    for family, addrs in sorted(by_family.items()):
        name = endpointslice_name(md_name) + ("-v6" if family == "IPv6" else "")
        meta = labels.object_meta(name, namespace, md_name, owner_uid, {
            **labels.common_labels(md_name), LABEL_SERVICE_NAME: md_name,
            LABEL_SLICE_MANAGED_BY: ENDPOINTSLICE_MANAGED_BY})
        out.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": family,
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
            "ports": [
                {"name": c.PORT_NAME_HTTP, "port": ACTIVATOR_HTTP_PORT, "protocol": "TCP", "appProtocol": "http"},
                {"name": c.PORT_NAME_GRPC, "port": ACTIVATOR_GRPC_PORT, "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
            ],
        })
    return out


def _ours(endpointslice: dict[str, Any], md_name: str) -> bool | None:
    """Whether a slice of the `<name>` Service is ours (True) or the controller's (False); None: not
    a slice of that Service."""
    lbl = (endpointslice.get("metadata") or {}).get("labels") or {}
    if lbl.get(LABEL_SERVICE_NAME) != md_name:
        return None
    return lbl.get(LABEL_SLICE_MANAGED_BY) == ENDPOINTSLICE_MANAGED_BY


def slices_to_delete(slices: Iterable[dict[str, Any]], md_name: str, at_zero: bool) -> list[str]:
    """EndpointSlices of the `<name>` Service that must go: at zero, every slice not ours (the
    EndpointSlice controller's, frozen once the selector is gone, and the mirroring controller's,
    copied from the Endpoints the endpoints controller left behind); serving, ours."""
    return sorted(s["metadata"]["name"] for s in slices if _ours(s, md_name) is (not at_zero))


def controller_slice_ready(slices: Iterable[dict[str, Any]], md_name: str) -> bool:
    """Whether the EndpointSlice controller's slices of `<name>` list a Ready pod (so ours may go)."""
    return any(_ours(s, md_name) is False and any((ep.get("conditions") or {}).get("ready") is not False
                                                  and ep.get("addresses") for ep in s.get("endpoints") or [])
               for s in slices)
