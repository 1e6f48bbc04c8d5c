"""The activator's chart template (templates/activator.yaml), rendered by the real helm binary."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import constants as c
from modeldeploy.resources.services import service_ports
from tests.support import chart

pytestmark = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")
NAME = "md-modeldeploy-activator"


def _docs(*sets: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in chart.render("activator.enabled=true", *sets)
            if d["metadata"]["name"] == NAME}


def test_on_by_default_and_off_when_disabled() -> None:
    assert {d["kind"] for d in chart.render() if d["metadata"]["name"] == NAME} >= {"Deployment", "Service"}
    assert not [d for d in chart.render("activator.enabled=false") if d["metadata"]["name"] == NAME]


def test_two_replicas_a_pdb_and_pods_meeting_restricted_pod_security() -> None:
    docs = _docs()
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
                         "NetworkPolicy"}
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["command"] == ["python3", "-m", "modeldeploy.activator"]
    assert "hostNetwork" not in pod and all("hostPath" not in v for v in pod["volumes"])
    assert pod["terminationGracePeriodSeconds"] > 20  # drainSeconds + margin
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MD_ACTIVATOR_ROUTES_CONFIGMAP"] == f"{NAME}-routes"
    assert env["MD_ACTIVATOR_DEMAND_LEASE"] == f"{NAME}-demand"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env["MD_ACTIVATOR_MAX_HELD_BYTES"] == str(256 * 2**20)  # half the memory limit


def test_rbac_is_two_named_objects_in_its_own_namespace() -> None:
    docs = _docs()
    role = docs["Role"]
    assert role["metadata"]["namespace"] == "modeldeploy-system"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
        if rule["verbs"] != ["create"]:  # create cannot be limited by name; everything else is
            assert rule.get("resourceNames"), rule
    granted = {(r["resources"][0], v, tuple(r.get("resourceNames", ()))) for r in role["rules"] for v in r["verbs"]}
    assert granted == {
        ("configmaps", "get", (f"{NAME}-routes",)), ("configmaps", "list", (f"{NAME}-routes",)),
        ("configmaps", "watch", (f"{NAME}-routes",)),
        ("leases", "get", (f"{NAME}-demand",)), ("leases", "patch", (f"{NAME}-demand",)), ("leases", "create", ()),
    }
    binding = docs["RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "modeldeploy-system"}]


def test_service_ports_are_named_as_the_models_services() -> None:
    """A model's EndpointSlice points its named ports at the activator's: the names must agree."""
    ports = {p["name"]: p for p in _docs()["Service"]["spec"]["ports"]}
    model_ports = {p["name"]: p for p in service_ports()}
    for name in (c.PORT_NAME_HTTP, c.PORT_NAME_GRPC):
        assert ports[name]["port"] == model_ports[name]["port"]
        assert ports[name]["appProtocol"] == model_ports[name]["appProtocol"]


def test_settings_reach_the_container() -> None:
    dep = _docs("activator.maxHeldPerModel=50", "activator.holdTimeoutSeconds=300", "activator.drainSeconds=40")[
        "Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MD_ACTIVATOR_MAX_HELD"] == "50" and env["MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS"] == "300"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45


def test_chart_lints_with_the_activator_on() -> None:
    import subprocess

    from tests.support.chart import CHART

    proc = subprocess.run([str(chart.helm()), "lint", "--strict", str(CHART), "--set", "activator.enabled=true"],
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0 and "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr
