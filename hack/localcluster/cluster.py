"""A whole local cluster: control plane, fake GPU nodes, and a kubectl bound to it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from . import binaries, controlplane, hostclean, nodes, realnode
from .config import ClusterConfig
from .progress import say, step


def kubectl(cfg: ClusterConfig, *args: str, input_text: str | None = None, check: bool = True,
            capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the cluster's own kubectl (same version as the server) against it."""
    argv = [str(binaries.path_of("kubectl")), f"--kubeconfig={cfg.kubeconfig}", *args]
    return subprocess.run(argv, input=input_text, text=True, check=check,
                          capture_output=capture)


def _existing_nodes(cfg: ClusterConfig) -> set[str]:
    out = kubectl(cfg, "get", "nodes", "-o", "json").stdout
    return {n["metadata"]["name"] for n in json.loads(out)["items"]}


def ensure_fake_nodes(cfg: ClusterConfig) -> None:
    """Create the kwok GPU nodes that do not exist yet, then wait until kwok reports them Ready."""
    wanted = nodes.fake_gpu_nodes(cfg.fake_nodes, cfg.gpus_per_node, cfg.gpu_product, cfg.max_pods_per_node)
    missing = [n for n in wanted if n["metadata"]["name"] not in _existing_nodes(cfg)]
    if missing:
        kubectl(cfg, "create", "-f", "-", input_text=yaml.safe_dump_all(missing))
    kubectl(cfg, "wait", "--for=condition=Ready", "node", "-l", "type=kwok", "--timeout=90s")


def _wait_for_rbac_bootstrap(cfg: ClusterConfig, timeout: float = 60) -> None:
    """The API server creates default roles after readyz; controllers need them before acting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = kubectl(cfg, "get", "serviceaccount", "default", "-n", "default", check=False)
        if ok.returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError("the default ServiceAccount never appeared (kube-controller-manager not working?)")


def effective(cfg: ClusterConfig) -> ClusterConfig:
    """A cluster that has a real node keeps it: `up` without --real-node, `status` and the
    rest must still see the API server on the bridge address."""
    if not cfg.real_node and realnode.present(cfg):
        return dataclasses.replace(cfg, real_node=True)
    return cfg


def up(cfg: ClusterConfig) -> None:
    began = time.monotonic()
    cold = not cfg.root.exists()
    cfg = effective(cfg)
    if cfg.real_node:
        realnode.prepare_host(cfg)  # the API server binds to the node bridge's address
    ports = controlplane.up(cfg)
    with step("waiting for controllers (default ServiceAccount)"):
        _wait_for_rbac_bootstrap(cfg)
    if cfg.fake_nodes > 0:
        with step(f"{cfg.fake_nodes} kwok nodes with {cfg.gpus_per_node}x nvidia.com/gpu each"):
            ensure_fake_nodes(cfg)
    if cfg.real_node:
        with step(f"real node {cfg.node_name} (containerd, kubelet, kube-proxy)"):
            realnode.up(cfg, controlplane.server_url(cfg, ports))
    took = time.monotonic() - began
    kind = f"{'cold' if cold else 'warm'}{' real-node' if cfg.real_node else ''}"
    say(f"cluster '{cfg.name}' is up ({kind} up took {took:.1f}s); export KUBECONFIG={cfg.kubeconfig}")
    timings = cfg.root / "timings.log"
    with timings.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {kind} up {took:.1f}s\n")


def down(cfg: ClusterConfig) -> None:
    """Stop every process and delete the cluster's directory: nothing left behind.

    The real node goes first (its pods, mounts, cgroups and netfilter rules need containerd's
    and kube-proxy's state); the directory is only deleted once nothing is mounted below it, so
    the deletion can never reach through a mount into other data.
    """
    with step(f"stopping cluster '{cfg.name}'"):
        problems = realnode.down(cfg)
        controlplane.down(cfg)
        still_mounted = hostclean.unmount_all(cfg.root)
        if still_mounted:
            raise RuntimeError(f"still mounted under {cfg.root}, not deleting it: {still_mounted}")
        if cfg.root.exists():
            shutil.rmtree(cfg.root)
    if problems:
        raise RuntimeError(f"cluster '{cfg.name}' is down but left behind: {problems}")


def load_image(cfg: ClusterConfig, archive: Path) -> None:
    """Import an image archive into the real node's containerd (what `load-image` runs)."""
    with step(f"importing {archive} into {cfg.node_name}"):
        realnode.load_image(cfg, archive)


def logs(cfg: ClusterConfig, component: str, lines: int) -> str:
    return controlplane.tail_log(cfg, component, lines)


def collect_logs(cfg: ClusterConfig, dest: Path) -> None:
    """Copy every component's log into `dest` (used by tests on failure)."""
    dest.mkdir(parents=True, exist_ok=True)
    if cfg.logs.exists():
        for log in cfg.logs.glob("*.log"):
            shutil.copy2(log, dest / log.name)
