"""Pure parts of the real node: rendered configs, certificates, API server settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from localcluster import containerd, controlplane, hostnet, nodeconfig, pki, realnode
from localcluster.config import ClusterConfig


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterConfig:
    monkeypatch.setenv("MD_CLUSTERS_DIR", str(tmp_path))
    return ClusterConfig(name="unit", fake_nodes=0, real_node=True)


PORTS = nodeconfig.NodePorts(kubelet=20250, kubelet_healthz=20248, proxy_healthz=20256, proxy_metrics=20249)


def test_kubelet_config_fits_this_machine(cfg: ClusterConfig) -> None:
    kc = nodeconfig.kubelet_config(cfg, PORTS)
    assert kc["failCgroupV1"] is False and kc["cgroupDriver"] == "cgroupfs"
    assert kc["cgroupRoot"] == "/modeldeploy-unit"
    assert kc["authentication"]["anonymous"]["enabled"] is False  # type: ignore[index]
    assert kc["authentication"]["webhook"]["enabled"] is True  # type: ignore[index]
    assert kc["authorization"]["mode"] == "Webhook"  # type: ignore[index]
    assert kc["imageGCHighThresholdPercent"] == 100
    assert kc["address"] == hostnet.GATEWAY
    assert kc["containerRuntimeEndpoint"] == f"unix://{containerd.socket(cfg)}"
    for key in ("podLogsDir", "volumePluginDir", "resolvConf", "tlsCertFile"):
        assert str(kc[key]).startswith(str(cfg.root)), key


def test_kube_proxy_avoids_sysctl_writes(cfg: ClusterConfig) -> None:
    kp = nodeconfig.kube_proxy_config(cfg, PORTS)
    assert kp["mode"] == "iptables" and kp["clusterCIDR"] == hostnet.SUBNET
    assert kp["conntrack"]["maxPerCore"] == 0  # type: ignore[index]
    assert kp["iptables"]["localhostNodePorts"] is False  # type: ignore[index]
    assert kp["hostnameOverride"] == cfg.node_name == "unit-node"


def test_containerd_config_has_the_verified_settings(cfg: ClusterConfig) -> None:
    doc = tomllib.loads(containerd.render_config(cfg, "localhost/pause:local", cfg.root / "net.d"))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/pause:local"
    assert cri["restrict_oom_score_adj"] is True and cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": str(cfg.root / "net.d")}
    assert doc["grpc"]["address"].startswith(str(cfg.root))
    assert doc["root"].startswith(str(cfg.root)) and doc["state"].startswith(str(cfg.root))


def test_cni_conflist(tmp_path: Path) -> None:
    conf = hostnet.cni_conflist("unit", tmp_path / "ipam")
    assert conf["name"] == "md-unit"
    bridge, portmap, loopback = conf["plugins"]  # type: ignore[misc]
    assert (bridge["type"], portmap["type"], loopback["type"]) == ("bridge", "portmap", "loopback")
    assert bridge["bridge"] == hostnet.BRIDGE and bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_apiserver_reaches_pods_only_with_a_real_node(cfg: ClusterConfig) -> None:
    ports = controlplane.Ports(1, 2, 6443, 4, 5, 6)
    bins = {"kube-apiserver": Path("/bin/true")}
    real = controlplane._args(cfg, "kube-apiserver", ports, bins)
    assert f"--bind-address={hostnet.GATEWAY}" in real and "--endpoint-reconciler-type=lease" in real
    assert controlplane.server_url(cfg, ports) == f"https://{hostnet.GATEWAY}:6443"
    plain = ClusterConfig(name="unit")
    args = controlplane._args(plain, "kube-apiserver", ports, bins)
    assert "--bind-address=127.0.0.1" in args and "--endpoint-reconciler-type=none" in args


def test_pki_adds_node_identities_and_bridge_san_without_rekeying(cfg: ClusterConfig, tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.ensure_pki(d, ("127.0.0.1",))
    ca_before = (d / "ca.crt").read_bytes()
    pki.ensure_pki(d, ("127.0.0.1", hostnet.GATEWAY), realnode.client_identities(cfg), realnode.serving_certs(cfg))
    assert (d / "ca.crt").read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(ca_before)
    server = x509.load_pem_x509_certificate((d / "apiserver.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    ips = [str(i) for i in server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
           .get_values_for_type(x509.IPAddress)]
    assert hostnet.GATEWAY in ips
    kubelet = x509.load_pem_x509_certificate((d / "kubelet.crt").read_bytes())
    assert kubelet.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:unit-node"
    assert [a.value for a in kubelet.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    proxy = x509.load_pem_x509_certificate((d / "kube-proxy.crt").read_bytes())
    assert proxy.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-proxy"
    issued = (d / "kubelet.crt").read_bytes()
    pki.ensure_pki(d, ("127.0.0.1", hostnet.GATEWAY), realnode.client_identities(cfg), realnode.serving_certs(cfg))
    assert (d / "kubelet.crt").read_bytes() == issued  # nothing re-issued when nothing is missing


def test_adding_a_real_node_restarts_what_must_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MD_CLUSTERS_DIR", str(tmp_path))
    ports = controlplane.Ports(1, 2, 6443, 4, 5, 6)
    plain = ClusterConfig(name="grow")
    assert controlplane._prepare(plain, ports) == set()
    assert controlplane._prepare(plain, ports) == set()  # nothing changed: nothing restarts
    real = ClusterConfig(name="grow", real_node=True)
    # New API server address and certificate: the API server and every client of it restart.
    assert controlplane._prepare(real, ports) == {"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                  "kwok"}
    assert controlplane._prepare(real, ports) == set()
