"""The real node's network choice (pure): one slot per cluster, collisions moved aside, records kept."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from localcluster import controlplane, hostnet, netplan, nodeconfig, realnode
from localcluster.config import ClusterConfig
from localcluster.netplan import LEGACY, Network, NetworkBusy

Net = ipaddress.IPv4Network
PORTS = nodeconfig.NodePorts(kubelet=20250, kubelet_healthz=20248, proxy_healthz=20256, proxy_metrics=20249)


def _claim_all(names: list[str]) -> list[Network]:
    """Choose for each name in turn, as `up` does on one machine: each sees the others' choices."""
    taken: list[Net] = []
    used: set[str] = set()
    chosen = []
    for name in names:
        net = netplan.choose(name, taken, used)
        taken += net.reserved()
        used |= net.names()
        chosen.append(net)
    return chosen


@pytest.mark.parametrize("names", [
    ["modeldeploy", "pytest-e2e"],
    ["pytest-pair-a", "pytest-pair-b", "dev"],
    [f"c{i}" for i in range(40)],
])
def test_distinct_names_get_distinct_networks(names: list[str]) -> None:
    nets = _claim_all(names)
    blocks = [Net(n.block) for n in nets]
    services = [Net(n.service_cidr) for n in nets]
    for i, a in enumerate(blocks + services):
        for b in (blocks + services)[i + 1:]:
            assert not a.overlaps(b), (a, b)
    assert len({n.bridge for n in nets}) == len({n.host_link for n in nets}) == len(names)
    assert len({n.host_ip for n in nets}) == len(names)


@pytest.mark.parametrize("name", ["modeldeploy", "pytest-e2e", "a", "a-much-longer-cluster-name-than-usual"])
def test_layout_of_a_slot_is_consistent(name: str) -> None:
    net = netplan.choose(name, [])
    block, pods = Net(net.block), Net(net.pod_subnet)
    link = Net(str(net.link_cidr))
    assert block.prefixlen == 24 and block.subnet_of(netplan.POD_SPACE)
    assert pods.subnet_of(block) and link.subnet_of(block) and not pods.overlaps(link)
    assert ipaddress.ip_address(net.gateway) in pods and net.node_ip == net.gateway
    assert {ipaddress.ip_address(net.host_ip), ipaddress.ip_address(str(net.link_ip))} <= set(link.hosts())
    assert Net(net.service_cidr).subnet_of(netplan.SERVICE_SPACE)
    assert not Net(net.service_cidr).overlaps(Net(netplan.DEFAULT_SERVICE_CIDR))
    assert len(net.bridge) <= 15 and len(str(net.host_link)) <= 15  # IFNAMSIZ
    assert net.netns and net.health_host == net.node_ip


def test_choice_is_deterministic_from_the_name() -> None:
    assert netplan.choose("pytest-e2e", []) == netplan.choose("pytest-e2e", [])
    assert netplan.choose("pytest-e2e", []).block == f"10.244.{netplan.preferred_slot('pytest-e2e')}.0/24"
    assert netplan.choose("pytest-e2e", []).bridge == f"md-{netplan.tag('pytest-e2e')}"


# (what the host already uses, how the choice must move)
COLLISIONS = [
    pytest.param(lambda s: [Net(f"10.244.{s}.7/32")], 1, id="an-address-in-the-slot"),
    pytest.param(lambda s: [Net(f"10.244.{s}.0/24")], 1, id="a-route-to-the-slot"),
    pytest.param(lambda s: [Net(f"10.244.{s}.128/25")], 1, id="a-route-to-part-of-the-slot"),
    pytest.param(lambda s: [Net(f"10.97.{s}.0/24")], 1, id="the-slot's-service-range"),
    pytest.param(lambda s: [Net(f"10.244.{(s + k) % 256}.0/24") for k in range(3)], 3, id="three-slots-in-a-row"),
]


@pytest.mark.parametrize(("taken_of", "moved"), COLLISIONS)
def test_collisions_move_to_the_next_free_slot(taken_of: Callable[[int], list[Net]], moved: int) -> None:
    name = "pytest-e2e"
    slot = netplan.preferred_slot(name)
    taken = taken_of(slot)
    net = netplan.choose(name, taken)
    assert net.block == f"10.244.{(slot + moved) % 256}.0/24"
    assert not any(n.overlaps(t) for n in net.reserved() for t in taken)


def test_interface_name_collision_picks_another_tag() -> None:
    first = netplan.choose("pytest-e2e", [])
    again = netplan.choose("pytest-e2e", [], {first.host_link or ""})
    assert again.host_link != first.host_link and again.bridge != first.bridge
    assert again.block == first.block  # the names moved, not the addresses


def test_pinned_service_range_is_kept_or_refused() -> None:
    net = netplan.choose("pytest-e2e", [], service_cidr="10.96.0.0/16")
    assert net.service_cidr == "10.96.0.0/16"
    assert netplan.first_host(net.service_cidr) == "10.96.0.1"
    with pytest.raises(NetworkBusy, match=r"10\.96\.0\.0/16"):
        netplan.choose("pytest-e2e", [Net("10.96.0.0/16")], service_cidr="10.96.0.0/16")


def test_a_full_host_is_refused() -> None:
    with pytest.raises(NetworkBusy, match="no free /24"):
        netplan.choose("x", [netplan.POD_SPACE])


def test_legacy_layout_is_the_one_before_namespaces() -> None:
    assert (hostnet.BRIDGE, hostnet.SUBNET, hostnet.GATEWAY) == ("md0", "10.244.7.0/24", "10.244.7.1")
    assert LEGACY.host_ip == LEGACY.node_ip == LEGACY.gateway and LEGACY.health_host == "127.0.0.1"
    assert not LEGACY.netns and LEGACY.reserved() == [Net("10.244.7.0/24")]  # its Services are not routed


@pytest.fixture
def clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MD_CLUSTERS_DIR", str(tmp_path))
    return tmp_path


def _record(root: Path, state: dict[str, object]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / hostnet.STATE_FILE).write_text(json.dumps(state))


def test_records_are_read_back(clusters: Path) -> None:
    net = netplan.choose("rec", [])
    _record(clusters / "rec", {"network": asdict(net)})
    _record(clusters / "old", {"ports": {}})  # a real node from before network records
    assert hostnet.recorded(clusters / "rec") == net
    assert hostnet.recorded(clusters / "old") == LEGACY
    assert hostnet.recorded(clusters / "none") is None
    assert hostnet.network(ClusterConfig(name="rec", real_node=True)) == net
    assert [n for n, _ in hostnet.other_clusters("rec")] == ["old"]


def test_service_range_follows_the_record(clusters: Path) -> None:
    net = netplan.choose("svc", [])
    _record(clusters / "svc", {"network": asdict(net)})
    assert hostnet.service_cidr(ClusterConfig(name="svc", real_node=True)) == net.service_cidr
    assert hostnet.service_cidr(ClusterConfig(name="kwok-only")) == netplan.DEFAULT_SERVICE_CIDR
    assert hostnet.service_cidr(ClusterConfig(name="kwok-only", service_cidr="10.100.0.0/24")) == "10.100.0.0/24"


def test_a_running_control_plane_keeps_its_service_range(clusters: Path) -> None:
    cfg = ClusterConfig(name="grow", real_node=True)
    assert realnode._pinned_service_cidr(cfg) is None  # a new cluster: the slot's own range
    cfg.root.mkdir()
    (cfg.root / "state.json").write_text("{}")  # its control plane ran without a real node
    assert realnode._pinned_service_cidr(cfg) == netplan.DEFAULT_SERVICE_CIDR


def test_later_real_nodes_copy_the_first_ones_host_baseline(clusters: Path) -> None:
    _record(clusters / "first", {"sysctls": {"vm/overcommit_memory": "0"}, "host_dirs_existed": ["/var/lib/cni"]})
    baseline = realnode._host_baseline(ClusterConfig(name="second", real_node=True))
    assert baseline == {"sysctls": {"vm/overcommit_memory": "0"}, "host_dirs_existed": ["/var/lib/cni"]}


def test_node_components_use_the_recorded_network(clusters: Path) -> None:
    net = netplan.choose("nsnode", [])
    cfg = ClusterConfig(name="nsnode", fake_nodes=0, real_node=True)
    _record(cfg.root, {"network": asdict(net)})
    kc = nodeconfig.kubelet_config(cfg, PORTS)
    assert kc["address"] == kc["healthzBindAddress"] == net.node_ip
    kp = nodeconfig.kube_proxy_config(cfg, PORTS)
    assert kp["clusterCIDR"] == net.pod_subnet and kp["nodePortAddresses"] == [net.pod_subnet]
    assert kp["healthzBindAddress"] == f"{net.node_ip}:{PORTS.proxy_healthz}"
    bridge = hostnet.cni_conflist(cfg.name, cfg.root / "ipam", net)["plugins"][0]  # type: ignore[index]
    assert bridge["bridge"] == net.bridge and bridge["ipam"]["ranges"] == [[{"subnet": net.pod_subnet}]]
    assert hostnet.enter(cfg, net) == ("nsenter", f"--net={cfg.root / 'netns'}", "--")
    assert hostnet.enter(cfg, LEGACY) == ()
    args = controlplane._args(cfg, "kube-apiserver", controlplane.Ports(1, 2, 6443, 4, 5, 6),
                              {"kube-apiserver": Path("/bin/true")})
    assert f"--bind-address={net.host_ip}" in args and f"--service-cluster-ip-range={net.service_cidr}" in args
    assert realnode.serving_certs(cfg)[0][2] == (cfg.node_name, net.node_ip, "127.0.0.1")
