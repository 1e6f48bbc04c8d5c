"""What the real node's kubelet and kube-proxy are told: pure renderers of their config files.

Settings are for this sandbox (cgroup v1, PID 1 not systemd, no CAP_SYS_RESOURCE) and keep every
path under the cluster directory, so `down` can remove all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import containerd, hostnet
from .config import ClusterConfig
from .netplan import Network


@dataclass
class NodePorts:
    """Ports of the node components, chosen once (free ports) so a second `up` keeps them."""

    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


def node_dir(cfg: ClusterConfig) -> Path:
    return cfg.root / "node"


def cgroup_root(cfg: ClusterConfig) -> str:
    """The kubelet's cgroupRoot: pods live below it, so `down` can find and remove them all."""
    return f"modeldeploy-{cfg.name}"


def kubelet_config(cfg: ClusterConfig, ports: NodePorts, net: Network | None = None) -> dict[str, object]:
    """KubeletConfiguration for cgroup v1 without CAP_SYS_RESOURCE, everything under the cluster dir.

    In the node's own namespace its loopback is not the host's: health endpoints listen on the
    node's IP there, so `status` on the host reaches them.
    """
    net = net or hostnet.network(cfg)
    d = node_dir(cfg)
    k = cfg.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": net.health_host,
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(k / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(k / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False},
                           "webhook": {"enabled": True, "cacheTTL": "30s"},
                           "x509": {"clientCAFile": str(k / "ca.crt")}},
        "authorization": {"mode": "Webhook",
                          "webhook": {"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "5s"}},
        "containerRuntimeEndpoint": f"unix://{containerd.socket(cfg)}",
        "imageServiceEndpoint": f"unix://{containerd.socket(cfg)}",
        # Kubernetes >= 1.35 refuses cgroup v1 unless told; PID 1 is not systemd.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_root(cfg)}",
        "cgroupsPerQOS": True,
        # Images cannot be pulled again here: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%", "imagefs.inodesFree": "1%"},
        "evictionPressureTransitionPeriod": "30s",
        "failSwapOn": False,
        "resolvConf": str(d / "resolv.conf"),
        "clusterDomain": "cluster.local",
        # The kubelet sets vm.overcommit_memory etc. itself; `down` puts the old values back.
        "protectKernelDefaults": False,
        # Lowering OOM scores needs CAP_SYS_RESOURCE, which this sandbox lacks.
        "oomScoreAdj": 0,
        # No canary/firewall chains of its own: kube-proxy's are the only KUBE-* chains to clean.
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(d / "pod-logs"),
        "volumePluginDir": str(d / "volume-plugins"),
        "maxPods": cfg.max_pods_per_node,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "10s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "enableDebuggingHandlers": True,
        "logging": {"format": "text"},
    }


def kube_proxy_config(cfg: ClusterConfig, ports: NodePorts, net: Network | None = None) -> dict[str, object]:
    """iptables mode, without the sysctl writes (conntrack sizing, route_localnet) it cannot do here.

    Its KUBE-* chains are global to the network namespace it runs in: the node's own, so other
    clusters' kube-proxies never see them.
    """
    net = net or hostnet.network(cfg)
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cfg.root / "kubeconfigs" / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "hostnameOverride": cfg.node_name,
        "clusterCIDR": net.pod_subnet,
        "detectLocalMode": "ClusterCIDR",
        # The node's IP (the kubelet's --node-ip), so kube-proxy never falls back to loopback.
        "bindAddress": net.node_ip,
        "healthzBindAddress": f"{net.health_host}:{ports.proxy_healthz}",
        "metricsBindAddress": f"{net.health_host}:{ports.proxy_metrics}",
        "oomScoreAdj": 0,
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                     "minSyncPeriod": "0s"},
        "nodePortAddresses": [net.pod_subnet],
    }
