"""Where a cluster lives and which versions it runs: one settings object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.35.4")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
HELM_VERSION = os.environ.get("HELM_VERSION", "v3.21.4")

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Build cache shared by every cluster (binaries keyed by version)."""
    return Path(os.environ.get("MD_CACHE", Path.home() / ".cache" / "modeldeploy"))


def clusters_dir() -> Path:
    """Parent of the per-cluster state directories."""
    return Path(os.environ.get("MD_CLUSTERS_DIR", "/var/tmp/modeldeploy-clusters"))


@dataclass(frozen=True)
class ClusterConfig:
    """What `up` builds: the name keys the directory, so several clusters can coexist."""

    name: str = "modeldeploy"
    fake_nodes: int = 3
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    max_pods_per_node: int = 110
    # None: 10.96.0.0/16, or for a real node a range of its own (hostnet.service_cidr says which).
    service_cidr: str | None = None
    pod_cidr: str = "10.245.0.0/16"
    extra_apiserver_args: tuple[str, ...] = field(default=())
    # One real kubelet + containerd node on this machine (real pods); fake_nodes may then be 0.
    real_node: bool = False

    @property
    def root(self) -> Path:
        return clusters_dir() / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def node_name(self) -> str:
        """The real node's name (its kubelet's identity: system:node:<node_name>)."""
        return f"{self.name}-node"
