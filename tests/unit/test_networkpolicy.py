"""The NetworkPolicies a ModelDeployment gets, from the chart's values to the built objects (pure,
plus the real helm binary for the chart). Admission and selection by a real API server are checked
in tests/e2e/test_triton_hardening.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy import constants as c
from modeldeploy.kube.client import KINDS
from modeldeploy.resources import Images, build_deployment, build_pdb, build_services, labels
from modeldeploy.resources.artifact_store import ArtifactStoreRef
from modeldeploy.resources.build_job import build_build_job
from modeldeploy.resources.networkpolicy import (
    ENV,
    LABEL_JOB_NAME,
    CacheAgentEgress,
    NetworkPolicySettings,
    StoreEgress,
    build_network_policies,
    parse,
)
from modeldeploy.resources.validation_job import build_validation_job, job_name
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
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
    dep = chart.operator_deployment(chart.render(*sets))
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
    for policy in build_network_policies("digits", "ml", UID, "r", NetworkPolicySettings(enabled=True), builds=True):
        assert _no_empty_lists(policy) == [], policy


# ---------------------------------------------------------------- the build Jobs' pods: `<name>-build`

IMAGES = Images(serving="registry.local/triton:1", loader="registry.local/loader:1",
                converter="registry.local/converter:1", serving_backend="python-onnx")
STORE = ArtifactStoreRef(uri="s3://artifacts/team-a", secret="artifact-store")
SPEC = api.parse_spec(apply_patch(BASE_SPEC, {"rollout": {"validation": {
    "datasetUri": "s3://m/v.npz", "minAccuracy": 0.9}}}), name="digits")


def _selects(obj: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy, a PDB or a Service selects a pod with these labels."""
    if obj["kind"] == "Service":
        wanted = obj["spec"]["selector"]  # a plain map
    else:
        selector = obj["spec"]["podSelector" if obj["kind"] == "NetworkPolicy" else "selector"]
        assert set(selector) == {"matchLabels"}, selector  # matchExpressions would need more than this
        wanted = selector["matchLabels"]
    assert wanted, obj  # an empty selector selects every pod
    return all(pod_labels.get(k) == v for k, v in wanted.items())


def _job_pod_labels(job: dict[str, Any]) -> dict[str, str]:
    """A Job's pod as the Job controller labels it: the template's labels plus the job-name ones."""
    name = job["metadata"]["name"]
    return {**job["spec"]["template"]["metadata"]["labels"], LABEL_JOB_NAME: name, "job-name": name}


def _build_pod(md_name: str = "digits", revision: str = "abc123defg") -> dict[str, str]:
    return _job_pod_labels(build_build_job(md_name, "ml", UID, SPEC, revision, IMAGES, STORE))


def _policies(settings: NetworkPolicySettings = SETTINGS) -> tuple[dict[str, Any], ...]:
    serving, validation, build = build_network_policies("digits", "ml", UID, "abc123defg", settings, builds=True)
    return serving, validation, build


def test_build_policy_is_named_owned_and_labelled_like_the_others() -> None:
    serving, _, build = _policies()
    assert build["apiVersion"] == "networking.k8s.io/v1" and build["kind"] == "NetworkPolicy"
    assert build["metadata"]["name"] == "digits-build" and build["metadata"]["namespace"] == "ml"
    assert build["metadata"]["ownerReferences"] == serving["metadata"]["ownerReferences"]
    assert build["metadata"]["labels"] == serving["metadata"]["labels"]


def test_build_policy_selects_the_build_job_pods_of_every_revision_and_nothing_else() -> None:
    _, _, build = _policies()
    assert build["spec"]["podSelector"] == {"matchLabels": {
        c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_APP_COMPONENT: "model-build", c.LABEL_BUILD_OF: "digits"}}
    for revision in ("abc123defg", "zzz9876543"):  # any revision's build Job, not only the current one
        assert _selects(build, _build_pod(revision=revision))
    serving_pod = build_deployment(md_name="digits", namespace="ml", owner_uid=UID, spec=SPEC, revision="abc123defg",
                                   replicas=1, images=IMAGES, role="stable")["spec"]["template"]["metadata"]["labels"]
    validation_pod = _job_pod_labels(build_validation_job("digits", "ml", UID, SPEC, "abc123defg", "zzz9876543",
                                                          IMAGES))
    for other in (serving_pod, validation_pod, _build_pod("digits2"), _build_pod("digit")):
        assert not _selects(build, other), other


def test_nothing_else_the_operator_builds_selects_a_build_pod() -> None:
    """NetworkPolicies add up: a build pod selected by the serving or validation policy would get
    their egress too; a Service or the PDB selecting it would send it traffic or count it."""
    pod = _build_pod()
    serving, validation, _ = _policies()
    services = build_services("digits", "ml", UID, stable_revision="abc123defg", canary_revision="zzz9876543")
    for obj in (serving, validation, build_pdb("digits", "ml", UID, 3), *services):
        assert not _selects(obj, pod), obj["metadata"]["name"]


def test_build_pod_gets_no_ingress_and_egress_only_to_dns_and_the_model_store() -> None:
    with_agent = NetworkPolicySettings(**{**SETTINGS.__dict__,
                                          "cache_agent": CacheAgentEgress({"app": "agent"}, 8090)})
    serving, validation, build = _policies(with_agent)
    assert build["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in build["spec"]
    assert build["spec"]["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
         "ports": [{"port": 443, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "10.244.3.253/32"}}]},
    ]
    # what the others may reach and the build pod may not: the node cache agent, the serving pods
    assert serving["spec"]["egress"][-1] not in build["spec"]["egress"]
    assert validation["spec"]["egress"][-1] not in build["spec"]["egress"]
    assert not any("podSelector" in peer or "namespaceSelector" in peer
                   for rule in build["spec"]["egress"] for peer in rule.get("to", []))


def test_no_build_policy_without_an_artifact_store_or_with_policies_off() -> None:
    names = [p["metadata"]["name"] for p in build_network_policies("digits", "ml", UID, "r", SETTINGS)]
    assert names == ["digits", "digits-validation"]
    assert build_network_policies("digits", "ml", UID, "r", parse(""), builds=True) == []
    assert build_network_policies("digits", "ml", UID, "r", NetworkPolicySettings(enabled=False), builds=True) == []


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
    assert env["MD_LOADER_IMAGE"] == "localhost/modeldeploy-operator:dev"  # our code: the operator's image
    env = _chart_env("gpuServing.enabled=true")
    assert env["MD_SERVING_IMAGE"] == "nvcr.io/nvidia/tritonserver:26.10-py3"  # stock, unchanged
    assert env["MD_LOADER_IMAGE"] == "localhost/modeldeploy-operator:dev"  # never the serving image
    assert env["MD_SERVING_BACKEND"] == "onnxruntime"
    env = _chart_env("gpuServing.enabled=true", "loaderImage=my/loader:1")
    assert env["MD_LOADER_IMAGE"] == "my/loader:1"
    assert json.loads(_chart_env()[ENV])["operatorNamespace"] == "modeldeploy-system"
