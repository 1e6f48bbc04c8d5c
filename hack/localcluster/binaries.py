"""Locate the cached Go binaries, building the missing ones once (hack/build-binaries.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from . import config
from .progress import step

# binary name -> (build target, version)
_BINARIES: dict[str, tuple[str, str]] = {
    "etcd": ("etcd", config.ETCD_VERSION),
    "kube-apiserver": ("k8s", config.K8S_VERSION),
    "kube-controller-manager": ("k8s", config.K8S_VERSION),
    "kube-scheduler": ("k8s", config.K8S_VERSION),
    "kubectl": ("k8s", config.K8S_VERSION),
    "kubelet": ("k8s", config.K8S_VERSION),
    "kube-proxy": ("k8s", config.K8S_VERSION),
    "kwok": ("kwok", config.KWOK_VERSION),
    "helm": ("helm", config.HELM_VERSION),
}

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


def path_of(name: str) -> Path:
    """Where the cached binary for `name` lives (it may not exist yet)."""
    _, version = _BINARIES[name]
    return config.cache_dir() / "bin" / f"{name}-{version}"


def ensure(*names: str) -> dict[str, Path]:
    """Return paths of the named binaries, building whichever are missing."""
    missing = {_BINARIES[n][0] for n in names if not os.access(path_of(n), os.X_OK)}
    if "kwok" in names and not kwok_stages().exists():
        missing.add("kwok")
    missing_targets = sorted(missing)
    if missing_targets:
        script = config.REPO_ROOT / "hack" / "build-binaries.sh"
        env = dict(os.environ, MD_CACHE=str(config.cache_dir()))
        env.update(K8S_VERSION=config.K8S_VERSION, ETCD_VERSION=config.ETCD_VERSION,
                   KWOK_VERSION=config.KWOK_VERSION, HELM_VERSION=config.HELM_VERSION)
        with step(f"building {', '.join(missing_targets)} from the Go module proxy (cached afterwards)"):
            subprocess.run([str(script), *missing_targets], check=True, env=env)
    return {n: path_of(n) for n in names}


def kwok_stages() -> Path:
    """kwok's Stage configs (node init, lease heartbeat, pod lifecycle), saved beside the binary."""
    return config.cache_dir() / "share" / f"kwok-{config.KWOK_VERSION}" / "stages.yaml"
