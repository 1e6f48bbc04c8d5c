"""The NetworkPolicies a ModelDeployment gets, from the chart's values to the built objects (pure,
plus the real helm binary for the chart). Admission and selection by a real API server are checked
in tests/e2e/test_triton_hardening.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeldeploy import constants as c
from modeldeploy.kube.client import KINDS
from modeldeploy.resources import labels
from modeldeploy.resources.networkpolicy import (
    ENV,
    LABEL_JOB_NAME,
    NetworkPolicySettings,
    StoreEgress,
    build_network_policies,
    parse,
)
from modeldeploy.resources.validation_job import job_name
from tests.support import chart

UID = "0b6c4b0e-6a8e-4e8e-9d56-3f1c8f1b2a10"
SETTINGS = NetworkPolicySettings(
    enabled=True, operator_namespace="modeldeploy-system", metrics_namespaces=("monitoring",),
    client_cidrs=("10.20.0.0/16",),
    model_store=(StoreEgress("0.0.0.0/0", ("169.254.169.254/32",), (443,)), StoreEgress("10.244.3.253/32")))

needs_helm = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")


def _build(settings: NetworkPolicySettings = SETTINGS) -> tuple[dict[str, Any], dict[str, Any]]:
    serving, validation = build_network_policies("digits", "ml", UID, "abc123defg", settings)
    return serving, validation


def _chart_env(*sets: str) -> dict[str, str]:
    (dep,) = [d for d in chart.by_kind(chart.render(*sets), "Deployment")]
    return {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def _no_empty_lists(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _no_empty_lists(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [path] if not obj else [p for i, v in enumerate(obj) for p in _no_empty_lists(v, f"{path}[{i}]")]
    return []


def test_off_without_settings_builds_nothing() -> None:
    assert parse("") == NetworkPolicySettings()
    assert build_network_policies("digits", "ml", UID, "r", parse("")) == []


def test_serving_policy_selects_every_serving_pod_and_owns_nothing_else() -> None:
    serving, _ = _build()
    assert serving["apiVersion"] == "networking.k8s.io/v1" and serving["kind"] == "NetworkPolicy"
    assert serving["metadata"]["name"] == "digits" and serving["metadata"]["namespace"] == "ml"
    assert serving["metadata"]["ownerReferences"][0]["uid"] == UID
    assert serving["spec"]["podSelector"] == {"matchLabels": labels.selector_labels("digits")}
    assert serving["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_clients_reach_http_and_grpc_from_allowed_namespaces_and_blocks_only() -> None:
    serving, _ = _build()
    clients, metrics = serving["spec"]["ingress"]
    assert clients["ports"] == [{"port": 8000, "protocol": "TCP"}, {"port": 8001, "protocol": "TCP"}]
    assert clients["from"] == [{"podSelector": {}}, {"namespaceSelector": {}},
                               {"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert metrics["ports"] == [{"port": 8002, "protocol": "TCP"}]
    assert metrics["from"] == [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["modeldeploy-system", "monitoring"]}]}}]


def test_a_label_selector_narrows_the_client_namespaces_and_the_own_one_stays() -> None:
    selector = {"matchLabels": {"modeldeploy.io/clients": "true"}}
    serving, _ = _build(NetworkPolicySettings(enabled=True, client_namespace_selector=selector))
    (clients,) = serving["spec"]["ingress"]  # no operator namespace, no metrics namespaces: 8002 closed
    assert clients["from"] == [{"podSelector": {}}, {"namespaceSelector": selector}]


def test_egress_is_dns_and_the_model_store_only() -> None:
    serving, _ = _build()
    dns, store, minio = serving["spec"]["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert store == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
                     "ports": [{"port": 443, "protocol": "TCP"}]}
    assert minio == {"to": [{"ipBlock": {"cidr": "10.244.3.253/32"}}]}  # no ports: every port


def test_validation_policy_selects_the_revisions_job_pod_and_lets_it_reach_only_the_model() -> None:
    _, validation = _build()
    assert validation["metadata"]["name"] == "digits-validation"
    assert validation["spec"]["podSelector"] == {"matchLabels": {LABEL_JOB_NAME: job_name("digits", "abc123defg")}}
    assert validation["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in validation["spec"]
    *common, model = validation["spec"]["egress"]
    assert common == _build()[0]["spec"]["egress"]
    assert model == {"to": [{"podSelector": {"matchLabels": labels.selector_labels("digits")}}],
                     "ports": [{"port": c.PORT_HTTP, "protocol": "TCP"}]}


def test_no_empty_list_is_sent_so_a_pass_at_rest_sees_no_drift() -> None:
    for policy in _build(NetworkPolicySettings(enabled=True)):
        assert _no_empty_lists(policy) == [], policy


@pytest.mark.parametrize(("doc", "message"), [
    ("{", "is not JSON"),
    ('{"enabled": true, "modelStore": [{"ports": [443]}]}', r"modelStore\[0\] needs a cidr"),
    ('{"enabled": true, "modelStore": [{"cidr": "10.0.0.0/33"}]}', "is not a CIDR"),
    ('{"enabled": true, "modelStore": [{"cidr": "10.0.0.0/8", "ports": [0]}]}', "is not a port"),
    ('{"enabled": true, "clients": {"cidrs": ["nope"]}}', "is not a CIDR"),
    ('{"enabled": true, "clients": {"namespaceSelector": "all"}}', "label selector"),
])
def test_bad_settings_are_refused_with_the_variable_named(doc: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse(doc)
    assert ENV in str(err.value)


def test_the_kind_is_known_to_the_client() -> None:
    assert KINDS["NetworkPolicy"].api_version == "networking.k8s.io/v1"


@needs_helm
def test_chart_hands_its_values_and_namespace_to_the_operator() -> None:
    settings = parse(_chart_env()[ENV])
    assert settings.enabled and settings.operator_namespace == "modeldeploy-system"
    assert settings.client_namespace_selector == {} and settings.client_cidrs == ()
    assert settings.model_store == (StoreEgress("0.0.0.0/0", ("169.254.169.254/32",), (443,)),)
    opened = parse(_chart_env("networkPolicy.metricsNamespaces={monitoring}",
                              "networkPolicy.clients.cidrs={10.20.0.0/16}",
                              "networkPolicy.modelStore[0].cidr=10.244.3.253/32",
                              "networkPolicy.modelStore[0].ports={9000}")[ENV])
    assert opened.metrics_namespaces == ("monitoring",) and opened.client_cidrs == ("10.20.0.0/16",)
    assert opened.model_store[0].cidr == "10.244.3.253/32" and opened.model_store[0].ports == (9000,)
    assert not parse(_chart_env("networkPolicy.enabled=false")[ENV]).enabled


@needs_helm
def test_chart_gives_the_operator_the_rbac_for_network_policies() -> None:
    for sets in ((), ("watchNamespaces={ml}",)):
        roles = [d for d in chart.render(*sets) if d["kind"] in ("ClusterRole", "Role")]
        rules = [r for role in roles for r in role.get("rules", []) if "networkpolicies" in r.get("resources", [])]
        assert len(rules) == 1 and rules[0]["apiGroups"] == ["networking.k8s.io"], sets
        assert {"get", "create", "patch", "delete"} <= set(rules[0]["verbs"])


@needs_helm
def test_gpu_serving_switches_the_default_image_and_backend() -> None:
    env = _chart_env()
    assert env["MD_SERVING_IMAGE"] == "localhost/modeldeploy-triton-cpu:dev"
    assert env["MD_SERVING_BACKEND"] == "python-onnx"
    env = _chart_env("gpuServing.enabled=true")
    assert env["MD_SERVING_IMAGE"] == env["MD_LOADER_IMAGE"] == "localhost/modeldeploy-triton-gpu:26.10"
    assert env["MD_SERVING_BACKEND"] == "onnxruntime"
    env = _chart_env("gpuServing.enabled=true", "loaderImage=my/loader:1")
    assert env["MD_LOADER_IMAGE"] == "my/loader:1"
    assert json.loads(_chart_env()[ENV])["operatorNamespace"] == "modeldeploy-system"
