"""Serving pods of a built revision fetch through their node's cache agent (issue 14, item 4).

With the chart's artifactCache.enabled and artifacts.store, the operator gets the agent's URL
(MD_ARTIFACT_CACHE_URL), hands it to the fetch init container of built revisions only, and its
per-model NetworkPolicy lets serving pods reach the agent's pods on their port. Off by default.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy.config import Settings, from_env
from modeldeploy.planning.build import BuildState
from modeldeploy.reconciler import Reconciler
from modeldeploy.resources import Images, build_deployment
from modeldeploy.resources.artifact_store import ArtifactStoreRef
from modeldeploy.resources.deployment import ArtifactFetch
from modeldeploy.resources.networkpolicy import (
    ENV,
    CacheAgentEgress,
    NetworkPolicySettings,
    build_network_policies,
    parse,
)
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
from tests.support import chart

UID = "0b8c1f5e-3d7a-4f3e-9a51-6a1c2f0e9b11"
IMAGES = Images(serving="registry.local/triton:1", loader="registry.local/loader:1",
                converter="registry.local/converter:1", serving_backend="python-onnx")
STORE = ArtifactStoreRef(uri="s3://artifacts/team-a", secret="artifact-store")
KEY = "digits-36b63aabb80daca386d31b25979672ae"
URL = "http://md-modeldeploy-cache-agent.modeldeploy-system.svc:8090"
AGENT_LABELS = {"app.kubernetes.io/name": "modeldeploy-cache-agent", "app.kubernetes.io/instance": "md"}
NP = NetworkPolicySettings(enabled=True, operator_namespace="modeldeploy-system",
                           cache_agent=CacheAgentEgress(AGENT_LABELS, 8090))
CHART_ON = ("artifacts.store=s3://artifacts/e2e", "artifacts.credentialsSecret=s3-creds",
            "artifactCache.enabled=true", "artifactCache.store=s3://artifacts/e2e")
needs_helm = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")


def _spec() -> api.ModelDeploymentSpec:
    return api.parse_spec(apply_patch(BASE_SPEC, {}), name="digits")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _pod(artifact: ArtifactFetch | None) -> dict[str, Any]:
    dep = build_deployment("digits", "ml", UID, _spec(), "abc1234567", 3, IMAGES, "stable", artifact=artifact)
    return dep["spec"]["template"]["spec"]


# ---------------------------------------------------------------- settings


def test_off_by_default_and_read_from_the_environment() -> None:
    assert Settings().artifact_cache_url == "" and Settings().artifact_cache_enabled is False
    s = from_env({"MD_ARTIFACT_STORE": "s3://artifacts", "MD_ARTIFACT_CACHE_URL": f" {URL} "})
    assert s.artifact_cache_url == URL and s.artifact_cache_enabled
    # without a store nothing is built, so no pod fetches: the URL alone turns nothing on
    assert from_env({"MD_ARTIFACT_CACHE_URL": URL}).artifact_cache_enabled is False


@pytest.mark.parametrize("url", ["md-cache:8090", "s3://artifacts", "ftp://x"])
def test_a_cache_url_the_fetch_cannot_use_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="MD_ARTIFACT_CACHE_URL"):
        from_env({"MD_ARTIFACT_STORE": "s3://artifacts", "MD_ARTIFACT_CACHE_URL": url})


# ---------------------------------------------------------------- the fetch init container


def test_the_fetch_asks_the_node_cache_agent_first() -> None:
    pod = _pod(ArtifactFetch(key=KEY, store=STORE, cache_url=URL))
    (init,) = pod["initContainers"]
    env = _env(init)
    assert env["MD_ARTIFACT_CACHE_URL"] == URL
    assert env["MD_ARTIFACT_STORE"] == STORE.uri  # the store stays: the fallback
    assert "MD_ARTIFACT_CACHE_URL" not in _env(pod["containers"][0])  # Triton never fetches


def test_without_a_cache_url_the_fetch_reads_the_store_only() -> None:
    (init,) = _pod(ArtifactFetch(key=KEY, store=STORE))["initContainers"]
    assert "MD_ARTIFACT_CACHE_URL" not in _env(init)


def test_the_cache_url_changes_only_the_init_container() -> None:
    a, b = _pod(ArtifactFetch(key=KEY, store=STORE)), _pod(ArtifactFetch(key=KEY, store=STORE, cache_url=URL))
    assert a["containers"] == b["containers"] and a["volumes"] == b["volumes"]


def _children(settings: Settings, artifact: dict[str, Any] | None) -> list[dict[str, Any]]:
    kube: Any = None  # _children builds objects from settings only
    md = {"metadata": {"name": "digits", "namespace": "ml", "uid": UID}}
    plan: Any = SimpleNamespace(replicas={"abc1234567": 2}, stable="abc1234567")
    cplan: Any = SimpleNamespace(main_service_revision="abc1234567")
    build = BuildState("Built", "built", artifact=artifact) if artifact is not None else None
    return Reconciler(kube, settings)._children(md, _spec(), "abc1234567", plan, cplan, build)


def _init_env(children: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [o for o in children if o["kind"] == "Deployment"]
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    return _env(init)


def test_the_operator_hands_its_setting_to_built_revisions_only() -> None:
    on = Settings(artifact_store="s3://artifacts", artifact_cache_url=URL)
    assert _init_env(_children(on, {"key": KEY}))["MD_ARTIFACT_CACHE_URL"] == URL
    assert "MD_ARTIFACT_CACHE_URL" not in _init_env(_children(on, None))  # the loader path: no fetch
    off = Settings(artifact_store="s3://artifacts")
    assert "MD_ARTIFACT_CACHE_URL" not in _init_env(_children(off, {"key": KEY}))


# ---------------------------------------------------------------- the serving pods' NetworkPolicy


def test_serving_pods_may_reach_the_agents_pods_on_its_port() -> None:
    serving, validation = build_network_policies("digits", "ml", UID, "abc1234567", NP)
    agent = serving["spec"]["egress"][-1]
    operator_ns = {"matchLabels": {"kubernetes.io/metadata.name": "modeldeploy-system"}}
    assert agent == {"to": [{"namespaceSelector": operator_ns, "podSelector": {"matchLabels": AGENT_LABELS}}],
                     "ports": [{"port": 8090, "protocol": "TCP"}]}
    assert agent not in validation["spec"]["egress"]  # the validation Job fetches no artifact


def test_no_agent_rule_without_the_agent() -> None:
    off = NetworkPolicySettings(enabled=True, operator_namespace="modeldeploy-system")
    on_rules = build_network_policies("digits", "ml", UID, "r", NP)[0]["spec"]["egress"]
    off_rules = build_network_policies("digits", "ml", UID, "r", off)[0]["spec"]["egress"]
    assert on_rules[:-1] == off_rules


def test_the_operator_drops_the_agent_rule_when_pods_do_not_ask_the_agent() -> None:
    doc = json.dumps({"enabled": True, "operatorNamespace": "modeldeploy-system",
                      "cacheAgent": {"podLabels": AGENT_LABELS, "port": 8090}})
    kube: Any = None
    on = Reconciler(kube, Settings(network_policy=doc, artifact_store="s3://a", artifact_cache_url=URL))
    assert on.network_policy.cache_agent == CacheAgentEgress(AGENT_LABELS, 8090)
    off = Reconciler(kube, Settings(network_policy=doc, artifact_store="s3://a"))
    assert off.network_policy.cache_agent is None
    policies = [o for o in _children(on.settings, {"key": KEY}) if o["kind"] == "NetworkPolicy"]
    assert any(r.get("ports") == [{"port": 8090, "protocol": "TCP"}] for r in policies[0]["spec"]["egress"])


@pytest.mark.parametrize(("agent", "message"), [
    ({"podLabels": {}, "port": 8090}, "podLabels"),
    ({"podLabels": {"a": 1}, "port": 8090}, "podLabels"),
    ({"podLabels": {"a": "b"}, "port": 0}, "cacheAgent.port"),
    ({"podLabels": {"a": "b"}}, "cacheAgent.port"),
])
def test_a_bad_agent_setting_is_refused_with_the_variable_named(agent: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse(json.dumps({"enabled": True, "cacheAgent": agent}))
    assert ENV in str(err.value)


# ---------------------------------------------------------------- the chart


def _operator_env(*sets: str) -> dict[str, str]:
    dep = chart.operator_deployment(chart.render(*sets))
    return {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


@needs_helm
def test_chart_is_off_by_default() -> None:
    env = _operator_env()
    assert env["MD_ARTIFACT_CACHE_URL"] == "" and parse(env[ENV]).cache_agent is None
    # the agent without built revisions (artifacts.store empty): nobody fetches, so no URL
    env = _operator_env("artifactCache.enabled=true", "artifactCache.store=s3://artifacts")
    assert env["MD_ARTIFACT_CACHE_URL"] == "" and parse(env[ENV]).cache_agent is None


@needs_helm
def test_chart_points_the_operator_at_its_agent() -> None:
    docs = chart.render(*CHART_ON)
    dep = chart.operator_deployment(docs)
    env = {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MD_ARTIFACT_CACHE_URL"] == URL
    (svc,) = [s for s in chart.by_kind(docs, "Service") if s["metadata"]["name"] == "md-modeldeploy-cache-agent"]
    (ds,) = chart.by_kind(docs, "DaemonSet")
    assert URL.endswith(f":{svc['spec']['ports'][0]['port']}")
    settings = parse(env[ENV])
    assert settings.cache_agent == CacheAgentEgress(svc["spec"]["selector"], 8090)
    assert dict(settings.cache_agent.pod_labels).items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8090
    assert from_env(env).artifact_cache_enabled


@needs_helm
def test_chart_fixed_cluster_ip_for_clusters_without_dns() -> None:
    docs = chart.render(*CHART_ON, "artifactCache.clusterIP=10.96.0.90", "artifactCache.port=9100")
    (svc,) = [s for s in chart.by_kind(docs, "Service") if s["metadata"]["name"] == "md-modeldeploy-cache-agent"]
    assert svc["spec"]["clusterIP"] == "10.96.0.90"
    dep = chart.operator_deployment(docs)
    env = {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MD_ARTIFACT_CACHE_URL"] == "http://10.96.0.90:9100"
    assert parse(env[ENV]).cache_agent == CacheAgentEgress(svc["spec"]["selector"], 9100)
