"""The operator never adopts what it did not create, and says why it cannot do a thing.

Against the real API server with the chart's RBAC: a user's Service named like a child is left
exactly as it was, with a condition naming it; names that would collide between two
ModelDeployments are refused at admission; in namespaced mode a 403 on the Gateway API is
reported as missing RBAC, not as a missing API.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import kubeconfig, process
from tests.support import operator as op
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MD = "modeldeployment"


def _md(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", ns)


def _condition(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _events(tc: ClusterHandle, ns: str, name: str, reason: str) -> list[str]:
    items = tc.kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["message"] for e in items if e["reason"] == reason]


def test_a_users_service_with_a_childs_name_is_left_alone(cluster: ClusterHandle, operator: Any,
                                                           namespace: str) -> None:
    users = {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "own-canary", "labels": {"team": "payments"}},
             "spec": {"selector": {"app": "payments"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}}
    cluster.apply(users, namespace)
    before = cluster.kubectl_json("get", "service", "own-canary", "-n", namespace)
    cluster.apply(model_deployment("own", replicas=1), namespace)

    md = wait_for(lambda: (m := _md(cluster, namespace, "own")) and
                  _condition(m, "Degraded").get("reason") == "OwnershipConflict" and m, 60,
                  message="Degraded=OwnershipConflict")
    degraded = _condition(md, "Degraded")
    assert f"Service {namespace}/own-canary already exists" in degraded["message"], degraded
    assert md["status"]["warnings"] == [degraded["message"]]
    # Everything else the model needs was made; the user's Service is exactly as it was.
    for kind, name in (("service", "own"), ("service", "own-stable"), ("pdb", "own")):
        assert cluster.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0, (kind, name)
    operator.wait_for_reconciles(namespace, ["own"], passes=3)
    after = cluster.kubectl_json("get", "service", "own-canary", "-n", namespace)
    assert after["metadata"].get("ownerReferences") is None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["selector"] == {"app": "payments"}
    assert all(f.get("manager") != "modeldeploy" for f in after["metadata"].get("managedFields", []))
    assert len(_events(cluster, namespace, "own", "OwnershipConflict")) == 1  # told once, not every pass

    # Once the user removes it, the operator makes its own and the condition clears.
    cluster.kubectl("delete", "service", "own-canary", "-n", namespace)
    wait_for(lambda: _condition(_md(cluster, namespace, "own"), "Degraded").get("status") == "False"
             and not _md(cluster, namespace, "own")["status"].get("warnings"), 60, message="conflict cleared")
    mine = cluster.kubectl_json("get", "service", "own-canary", "-n", namespace)
    assert mine["metadata"]["ownerReferences"][0]["name"] == "own"


@pytest.mark.parametrize("suffix", ["canary", "stable"])
def test_names_that_would_collide_are_refused_at_admission(cluster: ClusterHandle, namespace: str,
                                                           suffix: str) -> None:
    manifest = model_deployment(f"x-{suffix}", replicas=1)
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input_text=json.dumps(manifest),
                           check=False)
    assert proc.returncode != 0
    assert "metadata.name must not end in -canary or -stable" in proc.stderr, proc.stderr
    ok = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                         input_text=json.dumps(model_deployment(f"{suffix}-x", replicas=1)), check=False)
    assert ok.returncode == 0, ok.stderr


def _narrow_operator(cluster: ClusterHandle, namespace: str, work: Path) -> op.OperatorProcess:
    """An operator watching only `namespace`, whose Role is the chart's namespaced Role without the
    Gateway API rule (as a platform team that removed it would have)."""
    rendered = op.helm(cluster, "template", op.RELEASE, str(op.CHART), "--namespace", op.SYSTEM_NAMESPACE,
                       "--kube-version", "1.35.0", "--set", f"watchNamespaces={{{namespace}}}").stdout
    role = next(d for d in yaml.safe_load_all(rendered)
                if d and d.get("kind") == "Role" and d["metadata"].get("namespace") == namespace)
    rules = [r for r in role["rules"] if "gateway.networking.k8s.io" not in r.get("apiGroups", [])]
    assert len(rules) < len(role["rules"]), "the chart's Role grants the Gateway API: the test removes it"
    account = "narrow-operator"
    cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": account}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": account},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
    ], namespace)
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": f"{namespace}-discovery"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": f"{op.RELEASE}-discovery"},
                   "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    cfg = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
    path = work / "narrow.kubeconfig"
    kubeconfig.write(path, kubeconfig.render_token(cfg["clusters"][0]["cluster"]["server"], ca, token, "narrow",
                                                   f"{namespace}:{account}"))
    return op.OperatorProcess(kubeconfig=path, log_path=work / "narrow-operator.log",
                              metrics_port=process.free_port_block(2),
                              env={"MD_WATCH_NAMESPACES": namespace, "MD_RESYNC_SECONDS": "1",
                                   "MD_AUTOSCALE_SECONDS": "1", "MD_METRICS_SOURCE": "prometheus",
                                   "MD_PROMETHEUS_URL": f"http://127.0.0.1:{process.free_port()}"})


def test_forbidden_gateway_api_is_reported_as_missing_rbac_in_namespaced_mode(
        cluster: ClusterHandle, operator: Any, namespace: str, tmp_path: Path) -> None:
    folder = subprocess.run([str(ROOT / "hack" / "fetch-gateway-api-crds.sh")], check=True, capture_output=True,
                            text=True).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f", folder)
    cluster.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io",
                    "--timeout=60s")
    operator.kill()  # the cluster-wide operator would reconcile this namespace too; the fixture restarts it
    narrow = _narrow_operator(cluster, namespace, tmp_path)
    narrow.start()
    try:
        routed = model_deployment("routed", replicas=1)
        routed["spec"]["rollout"] = {"trafficRouting": {"gatewayAPI": {"enabled": True,
                                                                       "parentRefs": [{"name": "public"}]}}}
        cluster.apply(routed, namespace)
        md = wait_for(lambda: (m := _md(cluster, namespace, "routed")) and m.get("status", {}).get("warnings") and m,
                      60, message="a warning about the Gateway API")
        warning = md["status"]["warnings"][0]
        assert "RBAC forbids" in warning and "httproutes.gateway.networking.k8s.io" in warning, warning
        assert f"namespace {namespace}" in warning and "not installed" not in warning, warning
        wait_for(lambda: _events(cluster, namespace, "routed", "GatewayAPIUnavailable"), 10, message="its event")
        wait_for(lambda: _md(cluster, namespace, "routed")["status"].get("phase") == "Ready", 60,
                 message="the model still serves (traffic splits by pod count)")
        narrow.wait_for_reconciles(namespace, ["routed"], passes=3)
        assert _events(cluster, namespace, "routed", "GatewayAPIUnavailable") == [warning]  # once, not every pass
    finally:
        narrow.stop()
