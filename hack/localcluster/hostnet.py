"""The real node's network on the host: one bridge, the CNI config, and netfilter clean-up.

The bridge exists before the API server starts, because the API server binds to its address
(pods reach it through the `kubernetes` Service, which kube-proxy DNATs to that address). The
bridge, subnet and Service rules are host-wide (kube-proxy owns the global KUBE-* chains), so
only one cluster per machine can have a real node: the bridge's alias names its owner.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
import subprocess
from pathlib import Path

BRIDGE = "md0"
SUBNET = "10.244.7.0/24"
GATEWAY = "10.244.7.1"
_OWNER_PREFIX = "modeldeploy:"
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")

# Host settings the kubelet, kube-proxy and the CNI bridge plugin change: saved at the first
# `up`, put back by `down`.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


class NetworkBusy(RuntimeError):
    """The bridge or subnet belongs to something else (another cluster's real node)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def network_name(cluster: str) -> str:
    """The CNI network name; CNI writes it into its iptables comments and cache file names."""
    return f"md-{cluster}"


def bridge_owner() -> str | None:
    """The cluster that owns the bridge, "" if it exists without our alias, None if absent."""
    proc = _ip("-j", "-d", "link", "show", BRIDGE, check=False)
    if proc.returncode != 0:
        return None
    alias = json.loads(proc.stdout)[0].get("ifalias", "")
    return alias[len(_OWNER_PREFIX):] if alias.startswith(_OWNER_PREFIX) else ""


def ensure_bridge(cluster: str) -> None:
    """Create the bridge with the gateway address, or adopt our own; refuse anybody else's."""
    owner = bridge_owner()
    if owner is not None and owner != cluster:
        who = f"cluster '{owner}'" if owner else "something outside modeldeploy"
        raise NetworkBusy(f"bridge {BRIDGE} ({SUBNET}) is used by {who}; only one cluster per machine can "
                          f"have a real node: `python -m localcluster --name {owner or '?'} down` first")
    if owner is None:
        _refuse_subnet_in_use()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("link", "set", BRIDGE, "alias", f"{_OWNER_PREFIX}{cluster}")
    addrs = json.loads(_ip("-j", "addr", "show", "dev", BRIDGE).stdout)[0].get("addr_info", [])
    prefix = ipaddress.ip_network(SUBNET).prefixlen
    if not any(a.get("local") == GATEWAY for a in addrs):
        _ip("addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def _refuse_subnet_in_use() -> None:
    net = ipaddress.ip_network(SUBNET)
    for link in json.loads(_ip("-j", "addr", "show").stdout):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in net:
                raise NetworkBusy(f"{SUBNET} is already on interface {link['ifname']}")


def delete_bridge(cluster: str) -> None:
    """Delete the veths still attached to our bridge, then the bridge itself (only if ours)."""
    if bridge_owner() != cluster:
        return
    for link in json.loads(_ip("-j", "link", "show", "master", BRIDGE).stdout or "[]"):
        _ip("link", "del", link["ifname"], check=False)
    _ip("link", "del", BRIDGE, check=False)


def cni_conflist(cluster: str, ipam_dir: Path) -> dict[str, object]:
    """bridge (gateway, masquerade, hairpin, host-local IPAM) + portmap + loopback."""
    return {
        "cniVersion": "1.0.0",
        "name": network_name(cluster),
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": SUBNET}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_cni_config(cluster: str, conf_dir: Path, ipam_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-modeldeploy.conflist").write_text(json.dumps(cni_conflist(cluster, ipam_dir), indent=2))


def _rules(tool: str, table: str) -> list[str]:
    proc = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def chains(tool: str, table: str, prefix: str) -> list[str]:
    """User chains in `table` whose names start with `prefix`."""
    return [line.split()[1] for line in _rules(tool, table) if line.startswith("-N ") and
            line.split()[1].startswith(prefix)]


def kube_chains() -> list[str]:
    """Every KUBE-* chain in any table, as "tool/table/chain" (empty once kube-proxy cleaned up)."""
    return [f"{tool}/{table}/{c}" for tool in IPTABLES for table in TABLES for c in chains(tool, table, "KUBE-")]


def delete_chains(tool: str, table: str, doomed: set[str]) -> None:
    """Remove the rules that jump to `doomed` chains, then flush and delete those chains."""
    if not doomed:
        return
    for line in _rules(tool, table):
        if not line.startswith("-A "):
            continue
        jump = re.search(r" -[jg] (\S+)", line)
        if jump and jump.group(1) in doomed and line.split()[1] not in doomed:
            subprocess.run([tool, "-w", "-t", table, "-D", *_split_rule(line[3:])], capture_output=True)
    for chain in doomed:
        subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
    for chain in doomed:
        subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True)


def _split_rule(rule: str) -> list[str]:
    """Split an `iptables -S` rule into argv, honouring its double-quoted comments."""
    return shlex.split(rule)


def cleanup_netfilter(cluster: str) -> None:
    """Remove what kube-proxy's clean-up leaves: CNI masquerade/hostport chains and stray KUBE-*.

    Runs after kube-proxy --cleanup. The bridge plugin's per-pod chains are found by the network
    name in their comments; the shared CNI-HOSTPORT-* chains and any KUBE-* chain are removed
    too, since one machine has at most one real node and nothing else here uses them.
    """
    marker = f'name: \\"{network_name(cluster)}\\"'
    for tool in IPTABLES:
        for table in TABLES:
            ours: set[str] = set()
            for line in _rules(tool, table):
                if line.startswith("-A ") and (marker in line or f'"{network_name(cluster)}"' in line):
                    jump = re.search(r" -[jg] (CNI-\S+)", line)
                    if jump:
                        ours.add(jump.group(1))
            ours |= set(chains(tool, table, "CNI-HOSTPORT-")) | set(chains(tool, table, "CNI-DN-"))
            ours |= set(chains(tool, table, "KUBE-"))
            delete_chains(tool, table, ours)


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = (Path("/proc/sys") / key).read_text().strip()
    return out


def restore_sysctls(saved: dict[str, str]) -> None:
    for key, value in saved.items():
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
