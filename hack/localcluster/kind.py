"""The `kind` provider, for ordinary machines where Docker can run privileged containers.

Not usable on this project's CI machines (no CAP_SYS_RESOURCE, see docs/local-cluster.md), but
every test tier only needs a kubeconfig, so users with kind get the same tests. Fake GPUs are
added the way a device plugin would report them: node status capacity `nvidia.com/gpu`.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from .config import ClusterConfig
from .progress import say, step


def _kind() -> str:
    path = shutil.which("kind")
    if path is None:
        raise SystemExit("kind is not installed: `go install sigs.k8s.io/kind@v0.30.0` (needs Docker)")
    return path


def _kubectl(cfg: ClusterConfig, *args: str) -> str:
    kubectl = shutil.which("kubectl") or "kubectl"
    return subprocess.run([kubectl, f"--kubeconfig={cfg.kubeconfig}", *args], check=True, text=True,
                          capture_output=True).stdout


def _add_fake_gpus(cfg: ClusterConfig) -> None:
    nodes = json.loads(_kubectl(cfg, "get", "nodes", "-o", "json"))["items"]
    for node in nodes:
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(cfg.gpus_per_node)}]
        _kubectl(cfg, "patch", "node", node["metadata"]["name"], "--subresource=status", "--type=json",
                 "-p", json.dumps(patch))
        _kubectl(cfg, "label", "node", node["metadata"]["name"], "--overwrite",
                 "nvidia.com/gpu.present=true", f"nvidia.com/gpu.product={cfg.gpu_product}")


def main(cfg: ClusterConfig, cmd: str) -> int:
    kind = _kind()
    name = f"md-{cfg.name}"
    if cmd == "up":
        existing = subprocess.run([kind, "get", "clusters"], check=True, text=True, capture_output=True).stdout
        cfg.root.mkdir(parents=True, exist_ok=True)
        if name not in existing.split():
            with step(f"kind create cluster {name}"):
                subprocess.run([kind, "create", "cluster", "--name", name, "--kubeconfig", str(cfg.kubeconfig),
                                "--wait", "120s"], check=True)
        else:
            subprocess.run([kind, "export", "kubeconfig", "--name", name, "--kubeconfig", str(cfg.kubeconfig)],
                           check=True)
        _add_fake_gpus(cfg)
        say(f"kind cluster {name} up; export KUBECONFIG={cfg.kubeconfig}")
    elif cmd == "down":
        subprocess.run([kind, "delete", "cluster", "--name", name], check=True)
    elif cmd == "kubeconfig":
        print(cfg.kubeconfig)
    elif cmd == "status":
        print(subprocess.run([kind, "get", "nodes", "--name", name], text=True, capture_output=True).stdout)
    else:
        raise SystemExit(f"'{cmd}' is not supported with --provider kind")
    return 0
