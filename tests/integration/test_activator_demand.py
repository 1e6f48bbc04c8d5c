"""The activator against a real kube-apiserver, with exactly the RBAC the chart gives it: it follows the
routes ConfigMap (watched by name) and writes demand into its Lease; it can do nothing else.

The activator runs as a process on this machine, authenticated as the chart's ServiceAccount with a
real token (no admin credentials). The RBAC objects are the chart's own, rendered by helm.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from localcluster import kubeconfig
from localcluster.process import free_port
from modeldeploy.kube.activator import demand_key, parse_demand
from tests.support import chart
from tests.support.activator import running_activator
from tests.support.cluster import ClusterHandle, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")]
SA = "md-modeldeploy-activator"
ROUTES, LEASE = f"{SA}-routes", f"{SA}-demand"


def _install_rbac(cluster: ClusterHandle, namespace: str) -> None:
    docs = [d for d in chart.render("activator.enabled=true")
            if d["metadata"]["name"] == SA and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert len(docs) == 3
    for d in docs:
        d["metadata"]["namespace"] = namespace
        for s in d.get("subjects", []):
            s["namespace"] = namespace
    cluster.apply(docs, namespace)


def _sa_kubeconfig(cluster: ClusterHandle, namespace: str, dest: Path) -> Path:
    token = cluster.kubectl("create", "token", SA, "-n", namespace, "--duration=1h").stdout.strip()
    cfg = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = cfg["clusters"][0]["cluster"]["server"]
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
    kubeconfig.write(dest, kubeconfig.render_token(server, ca, token, "activator", f"{namespace}:{SA}"))
    return dest


def _routes_cm(namespace: str, models: list[dict[str, object]]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROUTES, "namespace": namespace},
            "data": {"routes.json": json.dumps({"models": models})}}


def _model(ns: str, name: str) -> dict[str, object]:
    dead = free_port()  # nothing listens: the model never becomes Ready in this test
    return {"namespace": ns, "name": name, "model": name, "http": f"127.0.0.1:{dead}", "grpc": f"127.0.0.1:{dead}"}


def test_routes_followed_and_demand_written_with_chart_rbac_only(cluster: ClusterHandle, namespace: str,
                                                                  tmp_path: Path) -> None:
    _install_rbac(cluster, namespace)
    cluster.apply(_routes_cm(namespace, [_model("ml", "digits")]), namespace)
    sa_config = _sa_kubeconfig(cluster, namespace, tmp_path / "sa.kubeconfig")

    # What the chart's Role does not allow, the activator's credentials cannot do.
    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, "-n", namespace, kubeconfig=sa_config, check=False)
        return out.stdout.strip() == "yes"

    assert can("patch", f"leases/{LEASE}") and can("watch", f"configmaps/{ROUTES}")
    for verb, what in [("patch", "leases/modeldeploy-leader"), ("get", "secrets"), ("list", "services"),
                       ("list", "pods"), ("update", f"configmaps/{ROUTES}"), ("get", "configmaps/other"),
                       ("list", "leases"), ("create", "endpointslices.discovery.k8s.io")]:
        assert not can(verb, what), f"the activator may {verb} {what}"
    assert not can("get", "configmaps", "--all-namespaces")

    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_KUBECONFIG": str(sa_config), "MD_ACTIVATOR_NAMESPACE": namespace,
        "MD_ACTIVATOR_ROUTES_CONFIGMAP": ROUTES, "MD_ACTIVATOR_DEMAND_LEASE": LEASE,
        "MD_ACTIVATOR_IDENTITY": "activator-0", "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "4",
        "MD_ACTIVATOR_DEMAND_RENEW_SECONDS": "1",
    }) as act:
        wait_for(lambda: act.metric("modeldeploy_activator_routes") == 1, 20, message="routes from the ConfigMap")

        # A request for the model: held, and demand appears on the Lease at once.
        result: dict[str, object] = {}

        def send() -> None:
            req = urllib.request.Request(f"http://{act.http_url}/v2/models/digits/infer", data=b"{}", method="POST",
                                         headers={"Host": "digits.ml.svc.cluster.local:8000"})
            try:
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as e:
                result["status"], result["retry_after"] = e.code, e.headers.get("Retry-After")

        sent = time.monotonic()
        sent_wall = dt.datetime.now(dt.UTC)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        lease: dict[str, object] = {}

        def demand_seen() -> bool:
            out = cluster.kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            lease.update(json.loads(out.stdout))
            return demand_key("ml", "digits") in (lease["metadata"].get("annotations") or {})  # type: ignore[union-attr]

        wait_for(demand_seen, 10, interval=0.05, message="demand on the Lease")
        visible = time.monotonic() - sent
        demand = parse_demand(lease["metadata"]["annotations"])  # type: ignore[index]
        at = demand[("ml", "digits")]
        assert sent_wall - dt.timedelta(seconds=1) <= at <= dt.datetime.now(dt.UTC)
        assert lease["spec"]["holderIdentity"] == "activator-0"  # type: ignore[index]
        print(f"\ndemand visible on the Lease {visible * 1000:.0f} ms after the request was sent "
              "(kubectl polling every 50 ms)")
        assert visible < 3.0

        # Renewed while the request waits (renewal 1 s), then 503 with Retry-After at the deadline.
        wait_for(lambda: parse_demand(cluster.kubectl_json("get", "lease", LEASE, "-n", namespace)["metadata"]
                                      ["annotations"])[("ml", "digits")] > at, 5, message="a renewal")
        t.join(timeout=15)
        assert result == {"status": 503, "retry_after": "2"}, result
        assert act.metric("modeldeploy_activator_demand_signals_total", result="error") == 0

        # The operator adds a model: the watch brings it within a second; removes all: gone.
        began = time.monotonic()
        cluster.apply(_routes_cm(namespace, [_model("ml", "digits"), _model("team-b", "resnet")]), namespace)
        wait_for(lambda: act.metric("modeldeploy_activator_routes") == 2, 10, interval=0.05,
                 message="the second route")
        print(f"route update applied {(time.monotonic() - began) * 1000:.0f} ms after the ConfigMap write")
        cluster.kubectl("delete", "configmap", ROUTES, "-n", namespace)
        wait_for(lambda: act.metric("modeldeploy_activator_routes") == 0, 10, message="routes removed")
        assert "Forbidden" not in act.log() and "403" not in act.log()


def test_two_replicas_write_demand_without_conflicts(cluster: ClusterHandle, namespace: str, tmp_path: Path) -> None:
    """Both replicas hold requests for models at zero and write to the one demand Lease at once:
    merge patches of annotations need no resourceVersion, so neither ever loses a write (no 409)."""
    _install_rbac(cluster, namespace)
    models = [_model("ml", f"m{i}") for i in range(4)]
    cluster.apply(_routes_cm(namespace, models), namespace)
    sa_config = _sa_kubeconfig(cluster, namespace, tmp_path / "sa.kubeconfig")
    env = {"MD_ACTIVATOR_KUBECONFIG": str(sa_config), "MD_ACTIVATOR_NAMESPACE": namespace,
           "MD_ACTIVATOR_ROUTES_CONFIGMAP": ROUTES, "MD_ACTIVATOR_DEMAND_LEASE": LEASE,
           "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "3", "MD_ACTIVATOR_DEMAND_RENEW_SECONDS": "0.2"}
    with running_activator(tmp_path / "a.log", {**env, "MD_ACTIVATOR_IDENTITY": "activator-a"}) as a, \
            running_activator(tmp_path / "b.log", {**env, "MD_ACTIVATOR_IDENTITY": "activator-b"}) as b:
        for act in (a, b):
            wait_for(lambda act=act: act.metric("modeldeploy_activator_routes") == 4, 20, message="routes")

        def send(url: str, model: str) -> None:
            req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=b"{}", method="POST",
                                         headers={"Host": f"{model}.ml.svc"})
            with contextlib.suppress(urllib.error.HTTPError):  # 503 at the hold deadline: no pod here
                urllib.request.urlopen(req, timeout=30)

        threads = [threading.Thread(target=send, args=(act.http_url, f"m{i}"), daemon=True)
                   for act in (a, b) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        demand = parse_demand(cluster.kubectl_json("get", "lease", LEASE, "-n", namespace)["metadata"]["annotations"])
        assert set(demand) == {("ml", f"m{i}") for i in range(4)}
        for act in (a, b):
            assert act.metric("modeldeploy_activator_demand_signals_total", result="error") == 0
            assert act.metric("modeldeploy_activator_demand_signals_total", result="ok") >= 2  # renewed
