"""A real NetworkPolicy controller for a local real-node cluster: kube-router's firewall only.

The local cluster's bridge CNI enforces no NetworkPolicy. kube-router (`--run-firewall` alone: no
routing, no service proxy, no CNI) turns policies into iptables rules and ipsets for the pods of
its node. It must run where those pods' traffic is filtered: inside the real node's network
namespace (`nsenter --net=<cluster>/netns`, as containerd, the kubelet and kube-proxy run), whose
chains and ipsets are that namespace's own, so other clusters on the machine are untouched.

The binary is built once from the Go module proxy (about 6 minutes on 2 cores) into
~/.cache/modeldeploy/bin/kube-router-<version>; it needs the `ipset` tool (Debian: ipset) and a
kernel with ip_set, xt_set and br_netfilter. Stopping it removes every rule, chain and set it made
in the namespace (its own `--cleanup-config` leaves its top chains and then crashes in the service
proxy's clean-up in v2.1.0, so the clean-up is done here: chains KUBE-ROUTER-*, KUBE-POD-FW-*,
KUBE-NWPLCY-*, the jumps commented "kube-router netpol", sets KUBE-*).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from localcluster import hostnet, process
from localcluster.config import ClusterConfig, cache_dir

VERSION: Final = "v2.1.0"  # the newest version the module proxy lists for github.com/cloudnativelabs/kube-router/v2
MODULE: Final = "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
BUILD_TIMEOUT_S: Final = 1800
NAME: Final = "kube-router"


def binary() -> Path:
    return cache_dir() / "bin" / f"kube-router-{VERSION}"


def ensure() -> Path:
    """The cached kube-router, built with `go install` on first use; clear errors for what is missing."""
    missing = [tool for tool in ("ipset", "go", "nsenter") if shutil.which(tool) is None]
    assert not missing, (f"the NetworkPolicy enforcement test needs {missing} "
                         "(Debian: apt-get install ipset; Go from go.dev; util-linux)")
    path = binary()
    if os.access(path, os.X_OK):
        return path
    with tempfile.TemporaryDirectory(prefix="kube-router-build-") as tmp:
        env = {**os.environ, "GOBIN": tmp}
        proc = subprocess.run(["go", "install", f"{MODULE}@{VERSION}"], env=env,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert proc.returncode == 0, f"go install {MODULE}@{VERSION} failed:\n{proc.stderr[-3000:]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".tmp")
        shutil.copy2(Path(tmp) / "kube-router", staged)
        staged.replace(path)
    return path


@dataclass(frozen=True)
class Running:
    """kube-router running in a cluster's node namespace."""

    cfg: ClusterConfig
    health_url: str

    def log(self) -> str:
        path = self.cfg.logs / f"{NAME}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def synced_after(self, mark: int) -> bool:
        """Whether kube-router finished a full sync of its rules since log offset `mark`."""
        return "sync iptables took" in self.log()[mark:]

    def knows(self, pod_ip: str) -> bool:
        """Whether a pod's address is in kube-router's sets yet: a pod that has just started is
        refused by policies that allow it until then (kube-router adds it on its next sync)."""
        sets = subprocess.run([*_in_node(self.cfg), "ipset", "list"], capture_output=True, text=True).stdout
        return pod_ip in sets.split()


def _in_node(cfg: ClusterConfig) -> list[str]:
    return ["nsenter", f"--net={hostnet.netns_path(cfg)}"]


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


CHAIN_PREFIXES: Final = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
JUMP_COMMENT: Final = "kube-router netpol"


def cleanup(cfg: ClusterConfig) -> list[str]:
    """Remove kube-router's filter rules, chains and ipsets from the node namespace; returns what
    is left of them (nothing when it worked)."""
    ipt = [*_in_node(cfg), "iptables", "-w", "5"]
    rules = subprocess.run([*ipt, "-S"], capture_output=True, text=True, check=True).stdout.splitlines()
    for rule in rules:
        if rule.startswith("-A ") and JUMP_COMMENT in rule and not rule.split()[1].startswith(CHAIN_PREFIXES):
            subprocess.run([*ipt, "-D", *shlex.split(rule)[1:]], capture_output=True)
    chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(CHAIN_PREFIXES)]
    for verb in ("-F", "-X"):
        for chain in chains:
            subprocess.run([*ipt, verb, chain], capture_output=True)
    sets = subprocess.run([*_in_node(cfg), "ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    for name in sets:
        if name.startswith("KUBE-"):
            subprocess.run([*_in_node(cfg), "ipset", "destroy", name], capture_output=True)
    left = subprocess.run([*ipt, "-S"], capture_output=True, text=True, check=True).stdout.splitlines()
    left_sets = subprocess.run([*_in_node(cfg), "ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    return ([r for r in left if JUMP_COMMENT in r or any(p in r for p in CHAIN_PREFIXES)]
            + [n for n in left_sets if n.startswith("KUBE-")])


@contextlib.contextmanager
def running(cfg: ClusterConfig, kubeconfig: Path, timeout: float = 60) -> Iterator[Running]:
    """Start kube-router's firewall in the cluster's real node namespace; stop and clean up after."""
    exe = ensure()
    net = hostnet.network(cfg)
    assert net.netns, f"cluster {cfg.name} has the legacy network layout (no node namespace)"
    health_port = process.free_port()
    run = cfg.root / "run"
    argv = [*_in_node(cfg), str(exe), f"--kubeconfig={kubeconfig}", f"--hostname-override={cfg.node_name}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
            f"--service-cluster-ip-range={net.service_cidr}", f"--health-port={health_port}",
            "--metrics-port=0", "--iptables-sync-period=30s", "--v=1"]
    process.stop(run, NAME)  # a previous run's leftover (a killed test session)
    process.start(run, cfg.logs, NAME, argv)
    controller = Running(cfg, f"http://{net.link_ip}:{health_port}/healthz")
    try:
        deadline = time.monotonic() + timeout
        while not (_healthy(controller.health_url) and controller.synced_after(0)):
            assert process.running(run, NAME), f"kube-router exited:\n{controller.log()[-3000:]}"
            assert time.monotonic() < deadline, f"kube-router not healthy after {timeout}s:\n{controller.log()[-3000:]}"
            time.sleep(0.5)
        yield controller
    finally:
        process.stop(run, NAME)
        left = cleanup(cfg)
        assert not left, f"kube-router's rules are still in the node namespace: {left}"
