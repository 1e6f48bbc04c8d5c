"""The real node's own containerd: private root, state and socket under the cluster directory.

Settings verified on these machines (docs: shared/ENVIRONMENT.md): restrict_oom_score_adj (no
CAP_SYS_RESOURCE to lower OOM scores), cgroupfs (PID 1 is not systemd), a sandbox image we build
ourselves (no registry), netns files under our state dir so `down` can find and unmount them.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from pathlib import Path

from . import hostclean, process
from .config import ClusterConfig

NAMESPACE = "k8s.io"  # the CRI plugin's namespace: images must be imported there
_SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts shim sockets here, whatever `state` is


def home(cfg: ClusterConfig) -> Path:
    return cfg.root / "node" / "containerd"


def socket(cfg: ClusterConfig) -> Path:
    return home(cfg) / "containerd.sock"


def render_config(cfg: ClusterConfig, sandbox_image: str, cni_conf_dir: Path) -> str:
    d = home(cfg)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket(cfg)}"

[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""


def ctr(cfg: ClusterConfig, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `ctr` against this cluster's containerd, in the CRI namespace."""
    return subprocess.run(["ctr", "--address", str(socket(cfg)), "--namespace", NAMESPACE, *args],
                          check=check, capture_output=True, text=True, timeout=timeout)


def healthy(cfg: ClusterConfig) -> bool:
    if not socket(cfg).exists():
        return False
    try:
        return ctr(cfg, "version", check=False, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start(cfg: ClusterConfig, sandbox_image: str, cni_conf_dir: Path, timeout: float = 30,
          wrap: tuple[str, ...] = ()) -> None:
    """Start containerd unless it is already answering; `wrap` prefixes its argv (e.g. nsenter
    into the node's network namespace, where its CNI plugins then make the pods' network)."""
    run = cfg.root / "run"
    if process.running(run, "containerd") and healthy(cfg):
        return
    process.stop(run, "containerd")
    d = home(cfg)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(render_config(cfg, sandbox_image, cni_conf_dir))
    process.start(run, cfg.logs, "containerd", [*wrap, "containerd", "--config", str(d / "config.toml")])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(cfg):
            return
        if not process.running(run, "containerd"):
            break
        time.sleep(0.2)
    raise RuntimeError(f"containerd did not come up; see {cfg.logs / 'containerd.log'}")


def has_image(cfg: ClusterConfig, name: str) -> bool:
    return name in ctr(cfg, "images", "ls", "-q", check=False).stdout.split()


def import_image(cfg: ClusterConfig, archive: Path) -> str:
    """Import an OCI or docker image archive into the CRI namespace; return ctr's output."""
    if not healthy(cfg):
        raise RuntimeError(f"containerd of cluster '{cfg.name}' is not running (is it up with --real-node?)")
    timeout = max(300.0, archive.stat().st_size / 10e6)  # the converter image is ~4.5 GB: allow 10 MB/s
    return ctr(cfg, "images", "import", str(archive), timeout=timeout).stdout


def task_ids(cfg: ClusterConfig) -> list[str]:
    out = ctr(cfg, "tasks", "ls", "-q", check=False, timeout=20).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _container_ids_on_disk(cfg: ClusterConfig) -> list[str]:
    tasks = home(cfg) / "state" / "io.containerd.runtime.v2.task" / NAMESPACE
    return sorted(p.name for p in tasks.iterdir()) if tasks.is_dir() else []


def sandbox_ids(cfg: ClusterConfig) -> set[str]:
    """Pod sandbox ids this containerd has known (CNI names its cache files after them)."""
    found: set[str] = set()
    for base in (home(cfg) / "root", home(cfg) / "state"):
        d = base / "io.containerd.grpc.v1.cri" / "sandboxes"
        if d.is_dir():
            found |= {p.name for p in d.iterdir()}
    return found


def _shim_socket(cfg: ClusterConfig, container_id: str) -> Path:
    """Where containerd 1.6 puts a shim's socket: sha256 of <grpc address>/<namespace>/<id>."""
    digest = hashlib.sha256(f"{socket(cfg)}/{NAMESPACE}/{container_id}".encode()).hexdigest()
    return _SHIM_SOCKETS / digest


def stop(cfg: ClusterConfig) -> None:
    """Delete every task (shims exit and unmount their rootfs), stop containerd, kill stray shims."""
    run = cfg.root / "run"
    ids = _container_ids_on_disk(cfg)
    if process.running(run, "containerd") and healthy(cfg):
        for task in task_ids(cfg):
            ctr(cfg, "tasks", "delete", "--force", task, check=False, timeout=30)
    process.stop(run, "containerd")
    hostclean.kill_pids(hostclean.pids_naming(str(socket(cfg))))
    for cid in ids:
        _shim_socket(cfg, cid).unlink(missing_ok=True)
    for d in (_SHIM_SOCKETS, _SHIM_SOCKETS.parent):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: a system containerd's sockets are left alone
