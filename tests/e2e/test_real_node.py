"""Real pods on the local cluster's real node: images built here, Pod Security, Services, logs,
exec, in-cluster API access, and a `down` that leaves nothing behind."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import cluster as lc
from localcluster import images, oci, realnode
from tests.conftest import ARTIFACTS
from tests.support.cluster import ClusterHandle, restricted_pod, wait_for

pytestmark = pytest.mark.e2e

IMAGE = "localhost/e2e-server:local"
TEST_IMAGE_SRC = Path(__file__).with_name("testimage")


def _record(line: str) -> None:
    """Timings go to test-artifacts/ so a run's numbers can be compared with the last one's."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "real-node-timings.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


@pytest.fixture(scope="module")
def server_image(real_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Go test server packed with oci.py (runs as uid 1000) and loaded into the node."""
    assert real_cluster.local is not None
    archive = tmp_path_factory.mktemp("images") / "e2e-server.tar"
    images.go_image(IMAGE, TEST_IMAGE_SRC, oci.ImageConfig(user="1000:1000", exposed_ports=("8080/tcp",)), archive)
    lc.load_image(real_cluster.local, archive)
    return IMAGE


@pytest.fixture(scope="module")
def restricted_ns(real_cluster: ClusterHandle) -> Iterator[str]:
    name = "e2e-restricted"
    real_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    wait_for(lambda: real_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30,
             message="default ServiceAccount")
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def web(real_cluster: ClusterHandle, restricted_ns: str, server_image: str) -> dict:
    """A restricted pod running the test server, behind a ClusterIP Service."""
    began = time.monotonic()
    real_cluster.apply([restricted_pod("web", server_image),
                        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}],
                       namespace=restricted_ns)
    real_cluster.kubectl("wait", "-n", restricted_ns, "--for=condition=Ready", "pod/web", "--timeout=90s")
    _record(f"pod create -> Ready {time.monotonic() - began:.1f}s")
    pod = real_cluster.kubectl_json("get", "pod", "web", "-n", restricted_ns)
    svc = real_cluster.kubectl_json("get", "svc", "web", "-n", restricted_ns)
    cluster_ip = svc["spec"]["clusterIP"]
    # Ready pod -> EndpointSlice -> kube-proxy rules takes a moment; until then the ClusterIP rejects.
    wait_for(lambda: _answers(f"http://{cluster_ip}/"), 30, interval=0.2, message=f"Service {cluster_ip}")
    _record(f"pod create -> answering on its ClusterIP {time.monotonic() - began:.1f}s")
    return {"pod_ip": pod["status"]["podIP"], "cluster_ip": cluster_ip, "pod": pod}


def _answers(url: str) -> bool:
    try:
        return _http_get(url).startswith("hello")
    except OSError:
        return False


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_node_is_ready_with_fake_gpus(real_cluster: ClusterHandle) -> None:
    assert real_cluster.local is not None
    node = real_cluster.kubectl_json("get", "node", real_cluster.local.node_name)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    labels = node["metadata"]["labels"]
    assert labels["type"] == "real"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_restricted_pod_runs_as_uid_1000(real_cluster: ClusterHandle, restricted_ns: str, web: dict) -> None:
    assert web["pod"]["status"]["phase"] == "Running"
    logs = real_cluster.kubectl("logs", "-n", restricted_ns, "web").stdout
    assert "listening on :8080 as uid 1000" in logs
    # Pod Security is really enforced in that namespace: a root pod is refused.
    bad = restricted_pod("root", IMAGE)
    bad["spec"]["securityContext"] = {"runAsUser": 0}
    refused = real_cluster.apply(bad, namespace=restricted_ns, check=False)
    assert refused.returncode != 0
    assert "restricted" in refused.stderr


def test_service_and_pod_ip_reachable_from_host(web: dict) -> None:
    assert _http_get(f"http://{web['pod_ip']}:8080/").startswith("hello from web")
    # ClusterIP: only kube-proxy's iptables rules make this address answer.
    assert _http_get(f"http://{web['cluster_ip']}/").startswith("hello from web")


def test_logs_and_exec(real_cluster: ClusterHandle, restricted_ns: str, web: dict) -> None:
    out = real_cluster.kubectl("exec", "-n", restricted_ns, "web", "--", "/app", "get",
                               f"http://{web['cluster_ip']}/").stdout
    assert out.startswith("hello from web")  # pod -> Service -> itself (hairpin)
    wait_for(lambda: "request GET /" in real_cluster.kubectl("logs", "-n", restricted_ns, "web").stdout, 10,
             message="request lines in kubectl logs")


def test_pod_reaches_api_server_with_its_service_account(real_cluster: ClusterHandle, restricted_ns: str,
                                                         web: dict) -> None:
    # Through the `kubernetes` Service (10.96.0.1:443), as in-cluster clients do.
    via_http = json.loads(_http_get(f"http://{web['pod_ip']}:8080/apicheck"))
    assert via_http["url"].startswith("https://10.96.0.1:443/"), via_http
    assert via_http["status"] == 201, via_http
    assert via_http["username"] == f"system:serviceaccount:{restricted_ns}:default"
    via_exec = json.loads(real_cluster.kubectl("exec", "-n", restricted_ns, "web", "--", "/app", "apicheck").stdout)
    assert via_exec["status"] == 201, via_exec


def test_up_again_is_idempotent(real_cluster: ClusterHandle, web: dict) -> None:
    cfg = real_cluster.local
    assert cfg is not None
    run = cfg.root / "run"
    before = {c: (run / f"{c}.pid").read_text() for c in realnode.COMPONENTS}
    began = time.monotonic()
    lc.up(cfg)
    _record(f"warm up (real node) {time.monotonic() - began:.1f}s")
    assert {c: (run / f"{c}.pid").read_text() for c in realnode.COMPONENTS} == before
    assert _http_get(f"http://{web['pod_ip']}:8080/healthz").strip() == "ok"


def test_down_leaves_nothing_behind(real_cluster: ClusterHandle, request: pytest.FixtureRequest) -> None:
    cfg = real_cluster.local
    assert cfg is not None
    began = time.monotonic()
    lc.down(cfg)
    _record(f"down (real node, 1 pod) {time.monotonic() - began:.1f}s")
    assert realnode.leftovers(cfg) == []
    # Later tests of this session may want the cluster: bring it back (also proves re-up works).
    later = request.session.items[request.session.items.index(request.node) + 1:]
    if any("real_cluster" in getattr(item, "fixturenames", ()) for item in later):
        lc.up(cfg)
