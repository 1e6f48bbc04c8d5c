"""The Helm chart, rendered and linted by the real helm binary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import binaries

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


def test_operator_pod_is_restricted_and_single() -> None:
    (dep,) = _by_kind(_render(), "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
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
    roles = _by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    assert [r["metadata"]["name"] for r in _by_kind(docs, "ClusterRole")] == ["md-modeldeploy-discovery"]
    (dep,) = _by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MD_WATCH_NAMESPACES"] == "ml,team-b"


def test_values_schema_refuses_bad_values() -> None:
    proc = _helm("template", "md", str(CHART), "--kube-version", "1.35.4", "--set", "logFormat=xml", check=False)
    assert proc.returncode != 0 and "logFormat" in proc.stderr


def test_service_monitor_optional() -> None:
    assert not _by_kind(_render(), "ServiceMonitor")
    (sm,) = _by_kind(_render("serviceMonitor.enabled=true"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
