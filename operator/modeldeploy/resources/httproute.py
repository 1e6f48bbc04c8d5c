"""The Gateway API HTTPRoute whose backend weights follow the canary (pure).

Without it, traffic splits by pod count behind `<name>`. With `spec.rollout.trafficRouting.gatewayAPI`
the Gateway splits requests between `<name>-stable` and `<name>-canary` at exactly the step's weight,
whatever the pod counts, and keeps a validating canary at weight 0.
"""

from __future__ import annotations

from typing import Any

from .. import constants as c
from ..api import ParentRef
from . import labels

ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"


def _parent_ref(ref: ParentRef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ref.name}
    for key, value in (("namespace", ref.namespace), ("group", ref.group), ("kind", ref.kind),
                       ("sectionName", ref.section_name), ("port", ref.port)):
        if value is not None:
            out[key] = value
    return out


def build_httproute(md_name: str, namespace: str, owner_uid: str, parent_refs: tuple[ParentRef, ...],
                    canary_weight: int) -> dict[str, Any]:
    """HTTPRoute `<name>`: stable gets 100 - weight, canary gets weight (both Services always exist)."""
    weight = max(0, min(100, canary_weight))
    backend = {"group": "", "kind": "Service", "port": c.PORT_HTTP}
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": labels.object_meta(md_name, namespace, md_name, owner_uid, labels.common_labels(md_name)),
        "spec": {
            "parentRefs": [_parent_ref(r) for r in parent_refs],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {**backend, "name": labels.stable_service_name(md_name), "weight": 100 - weight},
                    {**backend, "name": labels.canary_service_name(md_name), "weight": weight},
                ],
            }],
        },
    }
