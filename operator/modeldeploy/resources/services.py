"""The three Services of a ModelDeployment (pure).

`<name>` selects every serving pod: the address clients use; during a canary without weighted
routing, traffic splits by pod count. `<name>-stable` and `<name>-canary` select one revision each,
for analysis and for weighted routing (Gateway API backends). With no rollout in progress the
canary Service selects the stable revision, as Argo Rollouts does, so a route that names it is
never left without endpoints.
"""

from __future__ import annotations

from typing import Any

from .. import constants as c
from . import labels


def service_ports() -> list[dict[str, Any]]:
    """Triton's HTTP, gRPC and metrics ports, by name so the pods' port numbers stay their own."""
    return [
        {
            "name": c.PORT_NAME_HTTP,
            "port": c.PORT_HTTP,
            "targetPort": c.PORT_NAME_HTTP,
            "protocol": "TCP",
            "appProtocol": "http",
        },
        {
            "name": c.PORT_NAME_GRPC,
            "port": c.PORT_GRPC,
            "targetPort": c.PORT_NAME_GRPC,
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        },
        {
            "name": c.PORT_NAME_METRICS,
            "port": c.PORT_METRICS,
            "targetPort": c.PORT_NAME_METRICS,
            "protocol": "TCP",
            "appProtocol": "http",
        },
    ]


def _service(
    name: str, namespace: str, md_name: str, owner_uid: str, selector: dict[str, str], role: str | None
) -> dict[str, Any]:
    obj_labels = labels.common_labels(md_name)
    if role:
        obj_labels[c.LABEL_ROLE] = role
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": labels.object_meta(name, namespace, md_name, owner_uid, obj_labels),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": service_ports()},
    }


def build_services(
    md_name: str, namespace: str, owner_uid: str, stable_revision: str, canary_revision: str | None = None,
    main_revision: str | None = None,
) -> list[dict[str, Any]]:
    """[`<name>`, `<name>-stable`, `<name>-canary`]; canary falls back to the stable revision.

    `main_revision` narrows `<name>` to one revision: a canary being validated gets no live traffic.
    """
    canary = canary_revision or stable_revision
    main = labels.revision_selector(md_name, main_revision) if main_revision else labels.selector_labels(md_name)
    return [
        _service(md_name, namespace, md_name, owner_uid, main, None),
        _service(
            labels.stable_service_name(md_name),
            namespace,
            md_name,
            owner_uid,
            labels.revision_selector(md_name, stable_revision),
            c.ROLE_STABLE,
        ),
        _service(
            labels.canary_service_name(md_name),
            namespace,
            md_name,
            owner_uid,
            labels.revision_selector(md_name, canary),
            c.ROLE_CANARY,
        ),
    ]
