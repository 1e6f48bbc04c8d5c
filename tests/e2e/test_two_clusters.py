"""Two local clusters with a real node each, side by side on this machine (and beside any other,
such as `make demo`'s): each runs a pod on its own network, and taking one down leaves the
other's API server, node, pod and bridge untouched."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import cluster as lc
from localcluster import controlplane, hostnet, images, netplan, oci, realnode
from localcluster.config import ClusterConfig
from tests.conftest import ARTIFACTS
from tests.support.cluster import ClusterHandle, restricted_pod, start_real_node, wait_for

pytestmark = pytest.mark.e2e

NAMES = ("pytest-pair-a", "pytest-pair-b")
IMAGE = "localhost/e2e-server:local"
TEST_IMAGE_SRC = Path(__file__).with_name("testimage")


def _record(line: str) -> None:
    """Timings go to test-artifacts/ beside the other real-node timings."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "real-node-timings.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def _require_real_node_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("real nodes need root (namespaces, bridges, mounts, cgroups)")
    missing = [t for t in ("containerd", "runc", "ctr", "iptables", "nsenter", "unshare", "gcc")
               if shutil.which(t) is None]
    if missing or not Path("/usr/lib/cni/bridge").exists():
        pytest.skip(f"real node prerequisites missing: {missing or ['/usr/lib/cni']} (run `make system`)")


def _all_healthy(cfg: ClusterConfig) -> bool:
    """Every control-plane and node component answers its health check."""
    states = {**controlplane.status(cfg), **realnode.status(cfg)}
    return all(state.startswith("healthy") for component, state in states.items() if component != "network")


@pytest.fixture(scope="module")
def bystanders() -> Iterator[list[ClusterConfig]]:
    """Other clusters with a real node that were healthy before (the demo's, the e2e tier's):
    they must still be healthy after this module."""
    before = [ClusterConfig(name=name, real_node=True) for name, _ in hostnet.other_clusters("")
              if name not in NAMES]
    healthy = [cfg for cfg in before if _all_healthy(cfg)]
    yield healthy
    broken = [cfg.name for cfg in healthy if not _all_healthy(cfg)]
    assert not broken, f"clusters beside this test were disturbed: {broken}"


@pytest.fixture(scope="module")
def pair(bystanders: list[ClusterConfig]) -> Iterator[list[ClusterHandle]]:
    """Both clusters up (each with a Service range of its own); both down at the end."""
    _require_real_node_host()
    began = time.monotonic()
    handles: list[ClusterHandle] = []
    try:
        for name in NAMES:
            handles.append(start_real_node(name, service_cidr=None))
        _record(f"two real-node clusters up {time.monotonic() - began:.1f}s")
        yield handles
    finally:
        for h in handles:
            if h.local is not None and h.local.root.exists() and not os.environ.get("MD_KEEP_CLUSTER"):
                lc.down(h.local)


def _cfg(h: ClusterHandle) -> ClusterConfig:
    assert h.local is not None
    return h.local


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _answers(url: str, expected: str) -> bool:
    try:
        return _http_get(url).startswith(expected)
    except OSError:
        return False


@pytest.fixture(scope="module")
def webs(pair: list[ClusterHandle], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """On each cluster: the test server image loaded, a pod `web-<a|b>` Ready behind a Service."""
    archive = tmp_path_factory.mktemp("images") / "e2e-server.tar"
    images.go_image(IMAGE, TEST_IMAGE_SRC, oci.ImageConfig(user="1000:1000", exposed_ports=("8080/tcp",)), archive)
    out = []
    for h in pair:
        name = f"web-{_cfg(h).name[-1]}"
        lc.load_image(_cfg(h), archive)
        h.apply([restricted_pod(name, IMAGE), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                              "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}],
                namespace="default")
        out.append({"name": name})
    for h, web in zip(pair, out, strict=True):
        h.kubectl("wait", "-n", "default", "--for=condition=Ready", f"pod/{web['name']}", "--timeout=120s")
        pod = h.kubectl_json("get", "pod", web["name"], "-n", "default")
        web.update(pod=pod, pod_ip=pod["status"]["podIP"],
                   cluster_ip=h.kubectl_json("get", "svc", web["name"], "-n", "default")["spec"]["clusterIP"])
        # Ready pod -> EndpointSlice -> this cluster's kube-proxy rules (in its node's namespace).
        wait_for(lambda w=web: _answers(f"http://{w['cluster_ip']}/", f"hello from {w['name']}"), 30,
                 interval=0.2, message=f"Service {web['cluster_ip']} of {web['name']}")
    return out


def test_each_cluster_has_its_own_network(pair: list[ClusterHandle]) -> None:
    nets = [hostnet.network(_cfg(h)) for h in pair]
    assert all(n.netns for n in nets)
    assert len({n.block for n in nets}) == len({n.bridge for n in nets}) == len({n.service_cidr for n in nets}) == 2
    for net in nets:  # and none of them overlaps what else is on the host
        for other_name, root in hostnet.other_clusters(""):
            other = hostnet.recorded(root)
            if other is not None and other != net:
                assert not any(a.overlaps(b) for a in net.reserved() for b in other.reserved()), other_name
    for h, net in zip(pair, nets, strict=True):
        assert hostnet.bridge_present(_cfg(h), net)
        assert hostnet.links_of(_cfg(h).name) == [net.host_link]
        node = h.kubectl_json("get", "node", _cfg(h).node_name)
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
        assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == [net.node_ip]


def test_a_pod_runs_and_answers_on_each(pair: list[ClusterHandle], webs: list[dict]) -> None:
    for h, web in zip(pair, webs, strict=True):
        net = hostnet.network(_cfg(h))
        assert web["pod"]["status"]["phase"] == "Running"
        assert ipaddress.ip_address(web["pod_ip"]) in ipaddress.ip_network(net.pod_subnet)
        assert _http_get(f"http://{web['pod_ip']}:8080/").startswith(f"hello from {web['name']}")
        assert _http_get(f"http://{web['cluster_ip']}/").startswith(f"hello from {web['name']}")
        # exec (API server -> this node's kubelet -> its containerd), pod -> Service -> itself.
        out = h.kubectl("exec", "-n", "default", web["name"], "--", "/app", "get", f"http://{web['cluster_ip']}/")
        assert out.stdout.startswith(f"hello from {web['name']}")
        # The `kubernetes` Service leads each pod to its own cluster's API server.
        check = json.loads(_http_get(f"http://{web['pod_ip']}:8080/apicheck"))
        assert check["url"].startswith(f"https://{netplan.first_host(net.service_cidr)}:443/"), check
        assert check["status"] == 201 and check["username"] == "system:serviceaccount:default:default", check


def test_down_of_one_leaves_the_other_untouched(pair: list[ClusterHandle], webs: list[dict]) -> None:
    gone, kept = pair
    kept_web = webs[1]
    kept_net = hostnet.network(_cfg(kept))
    pids = {c: realnode.status(_cfg(kept))[c] for c in realnode.COMPONENTS}
    began = time.monotonic()
    lc.down(_cfg(gone))
    _record(f"down of one of two real-node clusters {time.monotonic() - began:.1f}s")
    assert realnode.leftovers(_cfg(gone)) == []

    assert _all_healthy(_cfg(kept))
    assert {c: realnode.status(_cfg(kept))[c] for c in realnode.COMPONENTS} == pids  # nothing restarted
    kept.kubectl("get", "--raw", "/readyz")
    node = kept.kubectl_json("get", "node", _cfg(kept).node_name)
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    pod = kept.kubectl_json("get", "pod", kept_web["name"], "-n", "default")
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"]["uid"] == kept_web["pod"]["metadata"]["uid"]
    assert hostnet.bridge_present(_cfg(kept), kept_net)
    assert hostnet.links_of(_cfg(kept).name) == [kept_net.host_link]
    assert _http_get(f"http://{kept_web['pod_ip']}:8080/").startswith(f"hello from {kept_web['name']}")
    assert _http_get(f"http://{kept_web['cluster_ip']}/").startswith(f"hello from {kept_web['name']}")
    out = kept.kubectl("exec", "-n", "default", kept_web["name"], "--", "/app", "apicheck")
    assert json.loads(out.stdout)["status"] == 201
