"""The NetworkPolicies of a ModelDeployment: who may reach its pods, and what they may reach (pure).

Two policies per ModelDeployment (three with built revisions), in its namespace, owned by it like every other child:

`<name>` selects every serving pod (all revisions; the loader init container and Triton share the
pod's network, and a NetworkPolicy applies to a pod, never to one of its containers):
- ingress: Triton's HTTP and gRPC ports (8000, 8001) from the model's own namespace, from the
  namespaces `clients.namespaceSelector` selects (every namespace by default) and from the
  `clients.cidrs` address blocks (clients outside the cluster); the metrics port (8002) only from
  the operator's namespace (it scrapes it) and `metricsNamespaces` (Prometheus);
- egress: DNS (port 53) and the model store (`modelStore`: address blocks and ports). The loader
  needs the store; Triton needs nothing, but shares the pod's egress: the store's credentials are
  in the loader's environment only, so Triton can reach the store's address without a key to it.
  With the node cache agent on (the chart's `artifactCache`, `cacheAgent` in the settings), also
  the agent's pods in the operator's namespace on the agent's port: a built revision's fetch asks
  its node's agent first. A policy applies to the connection after the Service's address is
  translated, so the rule names the agent's pods and container port, not its Service.

`<name>-validation` selects the canary validation Job's pod of the current revision (by the
`batch.kubernetes.io/job-name` label the Job controller sets: the pod has no name label, so that
Services and the PDB never count it): no ingress; egress to DNS, the model store (the dataset) and
the model's own serving pods on 8000.

`<name>-build`, only with an artifact store (built revisions: docs/artifacts.md), selects the build
Job pods of every revision of this ModelDeployment (by the labels labels.build_pod_labels puts on
them: the `model-build` component and `modeldeploy.io/build-of: <name>`; no name label, so
Services, the PDB and the other two policies never select them). The most fenced pod: it holds the
artifact store's credentials and runs the conversion of a user-supplied model. No ingress; egress
to DNS and the model store only (the source model and the artifact store are both reached through
`modelStore`): not the node cache agent, not the serving pods, not the API server (unless the
`modelStore` blocks include its address).

The settings are the chart's `networkPolicy` values, handed to the operator as one JSON document
in MD_NETWORK_POLICY (config.Settings.network_policy, parsed once by the reconciler with
`parse`); unset, no policy is built (an operator run outside the
chart). Enforcement needs a policy controller in the cluster (Calico, Cilium, kube-router, ...):
without one the policies are admitted and change nothing. docs/security.md.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .. import constants as c
from . import labels
from .validation_job import job_name

ENV: Final = "MD_NETWORK_POLICY"
API_VERSION: Final = "networking.k8s.io/v1"
LABEL_JOB_NAME: Final = "batch.kubernetes.io/job-name"  # set on a Job's pods by the Job controller
LABEL_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"  # set on every namespace by the API server
DNS_PORT: Final = 53


@dataclass(frozen=True)
class StoreEgress:
    """Where the model store is: an address block (minus `except_`) and its TCP ports (none = all)."""

    cidr: str
    except_: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class CacheAgentEgress:
    """The node cache agent's pods (in the operator's namespace): their labels and container port."""

    pod_labels: Mapping[str, str]
    port: int


@dataclass(frozen=True)
class NetworkPolicySettings:
    """The chart's `networkPolicy` values plus the operator's own namespace."""

    enabled: bool = False
    operator_namespace: str = ""
    # Namespaces (besides the model's own) whose pods may call Triton: a label selector, {} = all.
    client_namespace_selector: Mapping[str, Any] = field(default_factory=dict)
    client_cidrs: tuple[str, ...] = ()
    metrics_namespaces: tuple[str, ...] = ()
    model_store: tuple[StoreEgress, ...] = ()
    cache_agent: CacheAgentEgress | None = None  # set by the chart with artifactCache.enabled
    # The activator's pod labels (in the operator's namespace), set by the chart with activator.enabled:
    # it forwards the requests it held for a model at zero to the model's pods.
    activator_pod_labels: Mapping[str, str] | None = None


def _cidr(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError as e:
        raise ValueError(f"{ENV}: {where}: {value!r} is not a CIDR") from e


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{ENV}: {where}: {value!r} is not a port number")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{ENV}: {where} must be a list of names")
    return tuple(value)


def _pod_labels(value: Any, where: str) -> dict[str, str]:
    pod_labels = value.get("podLabels") if isinstance(value, dict) else None
    if (not isinstance(pod_labels, dict) or not pod_labels
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in pod_labels.items())):
        raise ValueError(f"{ENV}: {where}.podLabels must be a non-empty map of labels")
    return dict(sorted(pod_labels.items()))


def _cache_agent(value: Any) -> CacheAgentEgress | None:
    if not value:
        return None
    where = "cacheAgent"
    return CacheAgentEgress(pod_labels=_pod_labels(value, where), port=_port(value.get("port"), f"{where}.port"))


@functools.cache
def parse(raw: str) -> NetworkPolicySettings:
    """Settings from the JSON document the chart renders; "" is the default (no policies)."""
    if not raw.strip():
        return NetworkPolicySettings()
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{ENV} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{ENV} must be a JSON object")
    clients = doc.get("clients") or {}
    selector = clients.get("namespaceSelector") or {}
    if not isinstance(selector, dict):
        raise ValueError(f"{ENV}: clients.namespaceSelector must be a label selector")
    store = []
    for i, entry in enumerate(doc.get("modelStore") or []):
        where = f"modelStore[{i}]"
        if not isinstance(entry, dict) or "cidr" not in entry:
            raise ValueError(f"{ENV}: {where} needs a cidr")
        store.append(StoreEgress(
            cidr=_cidr(entry["cidr"], f"{where}.cidr"),
            except_=tuple(_cidr(x, f"{where}.except") for x in entry.get("except") or []),
            ports=tuple(_port(p, f"{where}.ports") for p in entry.get("ports") or [])))
    return NetworkPolicySettings(
        enabled=bool(doc.get("enabled", False)),
        cache_agent=_cache_agent(doc.get("cacheAgent")),
        activator_pod_labels=_pod_labels(doc["activator"], "activator") if doc.get("activator") else None,
        operator_namespace=str(doc.get("operatorNamespace") or ""),
        client_namespace_selector=selector,
        client_cidrs=tuple(_cidr(x, "clients.cidrs") for x in clients.get("cidrs") or []),
        metrics_namespaces=_names(doc.get("metricsNamespaces") or [], "metricsNamespaces"),
        model_store=tuple(store),
    )


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in ports]


def _ip_block(cidr: str, except_: tuple[str, ...] = ()) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": cidr}
    if except_:
        block["except"] = list(except_)
    return {"ipBlock": block}


def _egress_common(settings: NetworkPolicySettings) -> list[dict[str, Any]]:
    """DNS anywhere (cluster DNS, node-local caches), then the model store's blocks and ports."""
    rules: list[dict[str, Any]] = [{"ports": [{"port": DNS_PORT, "protocol": "UDP"},
                                              {"port": DNS_PORT, "protocol": "TCP"}]}]
    for store in settings.model_store:
        rule: dict[str, Any] = {"to": [_ip_block(store.cidr, store.except_)]}
        if store.ports:
            rule["ports"] = _tcp(*store.ports)
        rules.append(rule)
    return rules


def _cache_agent_egress(settings: NetworkPolicySettings) -> list[dict[str, Any]]:
    """The node cache agent's pods on their port, in the operator's namespace (none: no rule)."""
    agent = settings.cache_agent
    if agent is None or not settings.operator_namespace:
        return []
    return [{"to": [{"namespaceSelector": {"matchLabels": {LABEL_NAMESPACE_NAME: settings.operator_namespace}},
                     "podSelector": {"matchLabels": dict(agent.pod_labels)}}],
             "ports": _tcp(agent.port)}]


def _serving_ingress(settings: NetworkPolicySettings) -> list[dict[str, Any]]:
    clients: list[dict[str, Any]] = [{"podSelector": {}},  # the model's own namespace, always
                                     {"namespaceSelector": dict(settings.client_namespace_selector)}]
    clients += [_ip_block(cidr) for cidr in settings.client_cidrs]
    rules = [{"from": clients, "ports": _tcp(c.PORT_HTTP, c.PORT_GRPC)}]
    if settings.activator_pod_labels and settings.operator_namespace:
        # the activator's forwards of requests it held at zero (clients.namespaceSelector may not
        # select the operator's namespace)
        operator_ns = {"matchLabels": {LABEL_NAMESPACE_NAME: settings.operator_namespace}}
        rules.append({"from": [{"namespaceSelector": operator_ns,
                                "podSelector": {"matchLabels": dict(settings.activator_pod_labels)}}],
                      "ports": _tcp(c.PORT_HTTP, c.PORT_GRPC)})
    scrapers = sorted({settings.operator_namespace, *settings.metrics_namespaces} - {""})
    if scrapers:
        rules.append({"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": LABEL_NAMESPACE_NAME, "operator": "In", "values": scrapers}]}}],
            "ports": _tcp(c.PORT_METRICS)})
    return rules


def _policy(name: str, namespace: str, md_name: str, owner_uid: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": labels.object_meta(name, namespace, md_name, owner_uid, labels.common_labels(md_name)),
        "spec": spec,
    }


def validation_policy_name(md_name: str) -> str:
    return f"{md_name}-validation"


def build_policy_name(md_name: str) -> str:
    return f"{md_name}-build"


def build_pod_selector(md_name: str) -> dict[str, Any]:
    """Every build Job pod of the ModelDeployment, whatever its revision, and no other pod."""
    return {"matchLabels": labels.build_pod_labels(md_name)}


def build_network_policies(md_name: str, namespace: str, owner_uid: str, revision: str,
                           settings: NetworkPolicySettings, *, builds: bool = False) -> list[dict[str, Any]]:
    """[`<name>` (serving pods), `<name>-validation` (the revision's validation pod)], plus
    `<name>-build` (the build Jobs' pods) when `builds` (an artifact store is configured), or []
    when off.

    Empty lists are left out rather than sent (the API server drops them, and a field we send but
    it does not keep would look like drift on every pass).
    """
    if not settings.enabled:
        return []
    serving = _policy(md_name, namespace, md_name, owner_uid, {
        "podSelector": {"matchLabels": labels.selector_labels(md_name)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": _serving_ingress(settings),
        "egress": [*_egress_common(settings), *_cache_agent_egress(settings)],
    })
    validation = _policy(validation_policy_name(md_name), namespace, md_name, owner_uid, {
        "podSelector": {"matchLabels": {LABEL_JOB_NAME: job_name(md_name, revision)}},
        "policyTypes": ["Ingress", "Egress"],  # no ingress rule: nothing may connect to it
        "egress": [*_egress_common(settings),
                   {"to": [{"podSelector": {"matchLabels": labels.selector_labels(md_name)}}],
                    "ports": _tcp(c.PORT_HTTP)}],
    })
    if not builds:
        return [serving, validation]
    build = _policy(build_policy_name(md_name), namespace, md_name, owner_uid, {
        "podSelector": build_pod_selector(md_name),
        "policyTypes": ["Ingress", "Egress"],  # no ingress rule: nothing may connect to it
        "egress": _egress_common(settings),  # DNS and the model store: no agent, no serving pods
    })
    return [serving, validation, build]
