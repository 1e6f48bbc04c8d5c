"""One real node on this machine: containerd, kubelet and kube-proxy as local processes.

kwok nodes only pretend to run pods; this node runs them (images built locally with oci.py),
so tests can exercise kubectl logs/exec, Services through kube-proxy and in-cluster API access.
Order on `up`: the node's network (its own network namespace, bridge and a link to the host,
before the API server, which binds to the host end) -> control plane -> containerd (+ pause
image) -> kubelet -> kube-proxy -> fake GPUs on the registered node. Node components run in the
node's namespace, so several clusters on one machine can each have a real node.
`down` removes every trace of this cluster: processes, shims, mounts, cgroups, its namespace (with
every netfilter chain in it), its link and routes; the host settings (sysctls) the node components
changed are put back by the last real node on the machine to go.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import yaml

from . import binaries, containerd, hostclean, hostnet, images, kubeconfig, netplan, nodeconfig, nodes, pki, process
from .config import ClusterConfig
from .progress import say, step

COMPONENTS = ("containerd", "kubelet", "kube-proxy")
_LOG_LINKS = Path("/var/log/containers")  # the kubelet always links container logs here
_CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache (containerd 1.6 cannot move it)
# Host directories the node components create outside the cluster directory: removed again by
# `down` when they did not exist before and are empty.
# (/var/lib/kubelet: the device-plugin socket path is fixed; /run/mount: libmount's utab.)
_HOST_DIRS = (_LOG_LINKS, _CNI_CACHE, Path("/run/containerd"), Path("/var/lib/kubelet"), Path("/run/mount"))


def cni_conf_dir(cfg: ClusterConfig) -> Path:
    return cfg.root / "net.d"


def client_identities(cfg: ClusterConfig) -> tuple[pki.ClientIdentity, ...]:
    """The kubelet (Node authorizer identity) and kube-proxy (default system:node-proxier binding)."""
    return (pki.ClientIdentity("kubelet", f"system:node:{cfg.node_name}", ("system:nodes",)),
            pki.ClientIdentity("kube-proxy", "system:kube-proxy"))


def serving_certs(cfg: ClusterConfig) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return (("kubelet-serving", f"system:node:{cfg.node_name}",
             (cfg.node_name, hostnet.network(cfg).node_ip, "127.0.0.1")),)


def _state_path(cfg: ClusterConfig) -> Path:
    return cfg.root / hostnet.STATE_FILE


def present(cfg: ClusterConfig) -> bool:
    """Whether this cluster was brought up with a real node (its state outlives the processes)."""
    return _state_path(cfg).exists()


def _load_state(cfg: ClusterConfig) -> dict[str, object]:
    return _read_state(cfg.root)


def _read_state(root: Path) -> dict[str, object]:
    """A cluster directory's real-node record ({} if none): also read for other clusters."""
    try:
        return dict(json.loads((root / hostnet.STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _ports(cfg: ClusterConfig) -> nodeconfig.NodePorts | None:
    try:
        return nodeconfig.NodePorts(**_load_state(cfg)["ports"])  # type: ignore[arg-type]
    except (KeyError, TypeError):
        return None


def prepare_host(cfg: ClusterConfig) -> None:
    """Before the control plane starts: binaries, the recorded choices, the node's network."""
    binaries.ensure("kubelet", "kube-proxy")
    if not _state_path(cfg).exists():
        _record_new_node(cfg)
    net = hostnet.network(cfg)
    with step(f"network of the real node: {net.describe()}"):
        if net.netns:
            hostnet.ensure_node_network(cfg, net)
        else:
            hostnet.ensure_bridge(cfg.name)


def _record_new_node(cfg: ClusterConfig) -> None:
    """Choose ports and a network free on this host and record them with the host's original
    settings, once: every later `up`, `status` and `down` reads the same choice."""
    with hostnet.allocation_lock():
        taken, names = hostnet.in_use(cfg.name)
        net = netplan.choose(cfg.name, taken, names, _pinned_service_cidr(cfg))
        state = {"ports": asdict(nodeconfig.NodePorts(*_free_ports(4))), "network": asdict(net),
                 **_host_baseline(cfg)}
        cfg.root.mkdir(parents=True, exist_ok=True)
        tmp = _state_path(cfg).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(_state_path(cfg))  # whole or absent: other clusters read it to avoid our range


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (free_port alone may hand out the same one twice)."""
    picked: list[int] = []
    while len(picked) < count:
        p = process.free_port()
        if p not in picked:
            picked.append(p)
    return picked


def _pinned_service_cidr(cfg: ClusterConfig) -> str | None:
    """The Service range the node must route: the configured one, or, for a control plane
    that already runs without a real node, the default it was started with (changing a live
    cluster's Service range would orphan its Services)."""
    if cfg.service_cidr or not (cfg.root / "state.json").exists():
        return cfg.service_cidr
    return netplan.DEFAULT_SERVICE_CIDR


def _host_baseline(cfg: ClusterConfig) -> dict[str, object]:
    """The host's settings from before any real node changed them: the machine's first real
    node reads them, later ones copy its record (reading now would take another node's
    changes for the original)."""
    for _, root in hostnet.other_clusters(cfg.name):
        other = _read_state(root)
        if isinstance(other.get("sysctls"), dict):
            return {"sysctls": other["sysctls"], "host_dirs_existed": other.get("host_dirs_existed", [])}
    return {"sysctls": hostnet.read_sysctls(), "host_dirs_existed": [str(p) for p in _HOST_DIRS if p.exists()]}


def _write_if_changed(path: Path, text: str) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def healthy(cfg: ClusterConfig, component: str, ports: nodeconfig.NodePorts) -> bool:
    if component == "containerd":
        return containerd.healthy(cfg)
    host = hostnet.network(cfg).health_host
    if component == "kube-proxy":
        return _http_ok(f"http://{host}:{ports.proxy_healthz}/livez")
    if component == "kubelet":
        return _http_ok(f"http://{host}:{ports.kubelet_healthz}/healthz")
    raise ValueError(component)


def _start(cfg: ClusterConfig, name: str, argv: list[str], ports: nodeconfig.NodePorts, changed: bool,
           timeout: float = 60) -> None:
    """Start `name` unless it already runs healthy with an unchanged configuration."""
    run = cfg.root / "run"
    if not changed and process.running(run, name) and healthy(cfg, name, ports):
        say(f"{name} already running")
        return
    process.stop(run, name)
    with step(f"starting {name}"):
        process.start(run, cfg.logs, name, argv)
        deadline = time.monotonic() + timeout
        while not healthy(cfg, name, ports):
            if not process.running(run, name):
                raise RuntimeError(f"{name} exited; last log lines:\n{_tail(cfg, name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not healthy after {timeout:.0f}s; last log lines:\n{_tail(cfg, name)}")
            time.sleep(0.25)


def _tail(cfg: ClusterConfig, name: str, lines: int = 30) -> str:
    try:
        return "\n".join((cfg.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _kubectl(cfg: ClusterConfig, *args: str, input_text: str | None = None) -> str:
    argv = [str(binaries.path_of("kubectl")), f"--kubeconfig={cfg.kubeconfig}", *args]
    proc = subprocess.run(argv, input=input_text, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def load_image(cfg: ClusterConfig, archive: Path) -> str:
    """Import an image archive (OCI or docker) into the node's containerd, where the kubelet finds it."""
    return containerd.import_image(cfg, archive)


def up(cfg: ClusterConfig, server: str) -> None:
    """Start the node's components (control plane already up) and wait until the node is Ready."""
    ports = _ports(cfg)
    if ports is None:
        raise RuntimeError("prepare_host() must run before realnode.up()")
    bins = binaries.ensure("kubelet", "kube-proxy")
    net = hostnet.network(cfg)
    wrap = hostnet.enter(cfg, net)
    d = nodeconfig.node_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    hostclean.ensure_cgroup(nodeconfig.cgroup_root(cfg))
    hostnet.write_cni_config(cfg.name, cni_conf_dir(cfg), d / "ipam", net)
    # Pods get no cluster DNS (there is none); a loopback resolver fails fast inside the pod
    # instead of sending queries to the host's network.
    _write_if_changed(d / "resolv.conf", "nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n")

    with step("containerd"):
        containerd.start(cfg, images.PAUSE_IMAGE, cni_conf_dir(cfg), wrap=wrap)
    if not containerd.has_image(cfg, images.PAUSE_IMAGE):
        with step(f"importing {images.PAUSE_IMAGE}"):
            containerd.import_image(cfg, images.pause_image())

    kcdir = cfg.root / "kubeconfigs"
    kc_changed = False
    for stem in ("kubelet", "kube-proxy"):
        text = kubeconfig.render(server, cfg.pki, stem, cfg.name)
        kc_changed |= _write_if_changed(kcdir / f"{stem}.kubeconfig", text)
    kubelet_cfg = d / "kubelet.yaml"
    changed = _write_if_changed(kubelet_cfg, yaml.safe_dump(nodeconfig.kubelet_config(cfg, ports, net),
                                                            sort_keys=False))
    argv = [*wrap, str(bins["kubelet"]), f"--config={kubelet_cfg}", f"--kubeconfig={kcdir / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet'}", f"--hostname-override={cfg.node_name}",
            f"--node-ip={net.node_ip}", "--node-labels=type=real", "--v=1"]
    _start(cfg, "kubelet", argv, ports, changed or kc_changed)

    # After the kubelet: kube-proxy waits (up to 30 s) for its Node object to exist.
    proxy_cfg = d / "kube-proxy.yaml"
    changed = _write_if_changed(proxy_cfg, yaml.safe_dump(nodeconfig.kube_proxy_config(cfg, ports, net),
                                                          sort_keys=False))
    _start(cfg, "kube-proxy", [*wrap, str(bins["kube-proxy"]), f"--config={proxy_cfg}", "--v=1"], ports,
           changed or kc_changed)

    with step(f"node {cfg.node_name} Ready"):
        _wait_node(cfg, timeout=120)
    with step(f"{cfg.gpus_per_node}x nvidia.com/gpu (fake) on {cfg.node_name}"):
        advertise_gpus(cfg)


def _wait_node(cfg: ClusterConfig, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([str(binaries.path_of("kubectl")), f"--kubeconfig={cfg.kubeconfig}", "wait",
                               "--for=condition=Ready", f"node/{cfg.node_name}", "--timeout=10s"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if not process.running(cfg.root / "run", "kubelet"):
            raise RuntimeError(f"kubelet exited; last log lines:\n{_tail(cfg, 'kubelet')}")
        time.sleep(1)
    raise TimeoutError(f"node {cfg.node_name} not Ready after {timeout:.0f}s; kubelet log:\n{_tail(cfg, 'kubelet')}")


def advertise_gpus(cfg: ClusterConfig) -> None:
    """Fake GPUs the way a device plugin reports them: node status capacity (the kubelet keeps
    unknown extended resources and copies them to allocatable), plus the GPU discovery labels."""
    count = str(cfg.gpus_per_node)
    patch = [{"op": "add", "path": f"/status/{field}/nvidia.com~1gpu", "value": count}
             for field in ("capacity", "allocatable")]
    _kubectl(cfg, "patch", "node", cfg.node_name, "--subresource=status", "--type=json", "-p", json.dumps(patch))
    labels = {**nodes.gpu_labels(cfg.gpus_per_node, cfg.gpu_product), "type": "real"}
    _kubectl(cfg, "label", "node", cfg.node_name, "--overwrite", *(f"{k}={v}" for k, v in labels.items()))


def down(cfg: ClusterConfig) -> list[str]:
    """Stop the node and remove every trace of it from the host; return what could not be removed.

    Only this cluster's things go: its processes, cgroups, mounts (its namespace among them, with
    every netfilter rule inside), its link. What real nodes share (host directories, sysctls) is
    put back only by the last real node on the machine.
    """
    run = cfg.root / "run"
    state = _load_state(cfg)
    net = hostnet.network(cfg)
    for name in ("kubelet", "kube-proxy"):
        process.stop(run, name)
    if (nodeconfig.node_dir(cfg) / "containerd").exists() or process.running(run, "containerd"):
        containerd.stop(cfg)
    problems = [f"cgroup {p}" for p in hostclean.remove_cgroup(nodeconfig.cgroup_root(cfg))]
    problems += [f"mount {m}" for m in hostclean.unmount_all(cfg.root)]
    if net.netns:
        hostnet.delete_node_network(cfg, net)
    else:
        problems += _down_legacy_network(cfg)
    _remove_own_host_files(cfg)
    if not any(True for _ in hostnet.other_clusters(cfg.name)):
        existed = state.get("host_dirs_existed")
        _remove_host_dirs({str(p) for p in existed} if isinstance(existed, list) else {str(p) for p in _HOST_DIRS})
        saved = state.get("sysctls")
        if isinstance(saved, dict):
            hostnet.restore_sysctls({str(k): str(v) for k, v in saved.items()})
    return problems


def _down_legacy_network(cfg: ClusterConfig) -> list[str]:
    """The legacy layout's netfilter rules are the host's own: kube-proxy's clean-up, then ours."""
    owner = hostnet.bridge_owner()
    problems = []
    if owner == cfg.name or (owner is None and _state_path(cfg).exists()):
        kube_proxy = binaries.path_of("kube-proxy")
        if kube_proxy.exists():
            subprocess.run([str(kube_proxy), "--cleanup", "--v=0"], capture_output=True, timeout=60)
        hostnet.cleanup_netfilter(cfg.name)
        problems += [f"netfilter chain {c}" for c in hostnet.kube_chains()]
    hostnet.delete_bridge(cfg.name)
    return problems


def _remove_own_host_files(cfg: ClusterConfig) -> None:
    """What the kubelet and libcni wrote outside our directory for this cluster: log links, CNI
    result cache entries (found by our paths, network name and sandbox ids)."""
    ours = str(nodeconfig.node_dir(cfg) / "pod-logs")
    if _LOG_LINKS.is_dir():
        for link in _LOG_LINKS.iterdir():
            if link.is_symlink() and str(link.readlink()).startswith(ours):
                link.unlink()
    if _CNI_CACHE.is_dir():
        sandboxes = containerd.sandbox_ids(cfg)
        for f in _CNI_CACHE.rglob("*"):
            if f.is_file() and (f.name.startswith(f"{hostnet.network_name(cfg.name)}-") or
                                any(sid in f.name for sid in sandboxes)):
                f.unlink()


def _remove_host_dirs(existed_before: set[str]) -> None:
    """The host directories real nodes created (the last real node to go removes them)."""
    for top in _HOST_DIRS:
        if str(top) not in existed_before and top.is_dir():
            # We created it: our sockets go (the kubelet's device-plugin socket), then empty dirs.
            for d in sorted((Path(p) for p, _, _ in os.walk(top)), key=lambda p: -len(p.parts)):
                for f in d.iterdir():
                    if f.is_socket():
                        f.unlink()
                with contextlib.suppress(OSError):
                    d.rmdir()  # only empty directories go


def status(cfg: ClusterConfig) -> dict[str, str]:
    ports = _ports(cfg)
    if ports is None:
        return {}
    run = cfg.root / "run"
    out = {}
    for name in COMPONENTS:
        pid = process.read_pid(run, name)
        if not process.running(run, name):
            out[name] = "stopped"
        else:
            out[name] = f"{'healthy' if healthy(cfg, name, ports) else 'unhealthy'} (pid {pid})"
    net = hostnet.network(cfg)
    out["network"] = ("" if hostnet.bridge_present(cfg, net) else "BRIDGE MISSING: ") + net.describe()
    return out


def leftovers(cfg: ClusterConfig) -> list[str]:
    """What of this cluster's real node is still on the host (empty after a clean `down`)."""
    # Every component and shim names the cluster directory (config, socket or data dir) in its argv.
    found = [f"process {pid}: {' '.join(hostclean.cmdline(pid))[:120]}"
             for pid in hostclean.pids_naming(str(cfg.root))]
    # Its link (or legacy bridge) is found by its alias: after `down` the record is gone.
    found += hostnet.link_leftovers(cfg.name)
    # Netfilter chains on the host itself only ever come from the legacy layout's kube-proxy;
    # while another cluster owns the legacy bridge, they are that cluster's.
    if hostnet.bridge_owner() in (None, cfg.name):
        found += [f"netfilter chain {c}" for c in hostnet.kube_chains()]
    found += [f"mount {m}" for m in hostclean.mounts_under(cfg.root)]
    found += [f"cgroup {h / nodeconfig.cgroup_root(cfg)}" for h in hostclean.cgroup_hierarchies(include_unified=True)
              if (h / nodeconfig.cgroup_root(cfg)).exists()]
    if cfg.root.exists():
        found.append(f"directory {cfg.root}")
    return found
