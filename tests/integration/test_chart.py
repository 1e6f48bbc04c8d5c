"""The Helm chart, rendered and linted by the real helm binary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import binaries
from tests.support import chart

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = binaries.ensure("helm")["helm"]
    proc = subprocess.run([str(exe), *args], text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


def _render(*sets: str) -> list[dict[str, Any]]:
    out = _helm("template", "md", str(CHART), "--namespace", "modeldeploy-system", "--kube-version", "1.35.4",
                *[a for s in sets for a in ("--set", s)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints() -> None:
    out = _helm("lint", str(CHART), "--strict").stdout
    assert "0 chart(s) failed" in out


def test_chart_crd_is_the_one_in_crds_dir() -> None:
    (crd,) = _by_kind(_render(), "CustomResourceDefinition")
    source = yaml.safe_load((ROOT / "crds" / "modeldeploy.io_modeldeployments.yaml").read_text())
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    crd["metadata"].pop("annotations")
    assert crd == source
    assert not _by_kind(_render("crds.install=false"), "CustomResourceDefinition")
    (unkept,) = _by_kind(_render("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]


def test_operator_is_restricted_and_highly_available_by_default() -> None:
    docs = _render()
    dep = chart.operator_deployment(docs)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MD_LEADER_ELECTION_NAMESPACE"] == "modeldeploy-system"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    lease = env["MD_LEADER_LEASE"]
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == \
        "kubernetes.io/hostname"
    (pdb,) = [p for p in _by_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"] == dep["metadata"]["name"]]
    assert pdb["spec"]["maxUnavailable"] == 1
    (role,) = [r for r in _by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader")]
    assert role["metadata"]["namespace"] == "modeldeploy-system"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease],
                      "verbs": ["get", "list", "watch", "update"]}]
    # One replica without election is allowed; two writers without a leader are refused.
    alone = _render("replicaCount=1", "leaderElection.enabled=false")
    single = chart.operator_deployment(alone)
    assert single["spec"]["replicas"] == 1
    assert not [p for p in _by_kind(alone, "PodDisruptionBudget")
                if p["metadata"]["name"] == single["metadata"]["name"]]
    refused = _helm("template", "md", str(CHART), "--kube-version", "1.35.4", "--set", "leaderElection.enabled=false",
                    check=False)
    assert refused.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in refused.stderr
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = pod["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}


def test_rbac_is_minimal() -> None:
    docs = _render()
    rules = [r for role in _by_kind(docs, "ClusterRole") for r in role["rules"]]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key]
        assert "secrets" not in rule["resources"]
    pods = [r for r in rules if "pods" in r["resources"]]
    assert pods and set(pods[0]["verbs"]) == {"get", "list", "watch"}


def test_watch_namespaces_gives_roles_not_cluster_roles() -> None:
    docs = _render("watchNamespaces={ml,team-b}")
    roles = [r for r in _by_kind(docs, "Role") if r["metadata"].get("namespace") not in (None, "modeldeploy-system")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    assert [r["metadata"]["name"] for r in _by_kind(docs, "ClusterRole")] == ["md-modeldeploy-discovery"]
    dep = chart.operator_deployment(docs)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MD_WATCH_NAMESPACES"] == "ml,team-b"


def test_values_schema_refuses_bad_values() -> None:
    proc = _helm("template", "md", str(CHART), "--kube-version", "1.35.4", "--set", "logFormat=xml", check=False)
    assert proc.returncode != 0 and "logFormat" in proc.stderr


def test_service_monitor_optional() -> None:
    assert not _by_kind(_render(), "ServiceMonitor")
    (sm,) = _by_kind(_render("serviceMonitor.enabled=true"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
