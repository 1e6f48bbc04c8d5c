"""The real node's network on the host: its namespace, link, bridge, CNI config, netfilter clean-up.

Each real node lives in a network namespace of its own (a file under the cluster directory),
holding its bridge, its pods' veths and every netfilter rule kube-proxy, the kubelet and the CNI
plugins write: kube-proxy flushes and rewrites the global KUBE-* chains of the namespace it runs
in and deletes Service chains it does not know, so two kube-proxies cannot share one. The host
sees only one veth per cluster (mdh-<tag>, its alias naming the cluster) and routes to the pod
and Service ranges through it. Addresses are chosen in netplan.py and recorded in the cluster's
state, so `up`, `status` and `down` agree; `down` removes that cluster's link, routes and
namespace and nothing else.

Clusters made before namespaces were used (no network record) keep the old layout: bridge md0
with 10.244.7.0/24 on the host itself, where only one of them can exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import ClusterConfig, clusters_dir
from .netplan import DEFAULT_SERVICE_CIDR, LEGACY, Network, NetworkBusy

# The legacy layout's constants (clusters without a network record).
BRIDGE = LEGACY.bridge
SUBNET = LEGACY.pod_subnet
GATEWAY = LEGACY.gateway
STATE_FILE = "realnode.json"  # the real node's record in the cluster directory (realnode.py writes it)
_OWNER_PREFIX = "modeldeploy:"
_NODE_LINK = "eth0"  # the node end of the link, inside the namespace
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")

# Host settings the kubelet, kube-proxy and the CNI bridge plugin change: saved by the first real
# node's `up` (later ones copy its record), put back by the `down` of the last one on the machine.
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


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _ip_json(*args: str) -> list[dict[str, object]]:
    """`ip -j ...` parsed; [] when the object does not exist (ip then fails)."""
    proc = _ip("-j", *args, check=False)
    return list(json.loads(proc.stdout or "[]")) if proc.returncode == 0 else []


def network_name(cluster: str) -> str:
    """The CNI network name; CNI writes it into its iptables comments and cache file names."""
    return f"md-{cluster}"


# --- the record: which network a cluster has --------------------------------------------------

def recorded(root: Path) -> Network | None:
    """The network recorded in a cluster directory: None without a real node, LEGACY for a
    real node made before network records existed."""
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    net = state.get("network") if isinstance(state, dict) else None
    return Network(**net) if isinstance(net, dict) else LEGACY


def network(cfg: ClusterConfig) -> Network:
    """This cluster's network; LEGACY until one is recorded (`up` records it before anything
    uses it, so only clusters from before the record, and unit tests, see LEGACY)."""
    return recorded(cfg.root) or LEGACY


def service_cidr(cfg: ClusterConfig) -> str:
    """The Service range the API server and controller manager are given."""
    if cfg.real_node:
        return network(cfg).service_cidr
    return cfg.service_cidr or DEFAULT_SERVICE_CIDR


def other_clusters(cluster: str) -> Iterator[tuple[str, Path]]:
    """(name, directory) of every other cluster that has a real node record on this machine."""
    parent = clusters_dir()
    if parent.is_dir():
        for d in sorted(parent.iterdir()):
            if d.name != cluster and (d / STATE_FILE).exists():
                yield d.name, d


@contextlib.contextmanager
def allocation_lock() -> Iterator[None]:
    """Serialise choosing and recording networks, so two concurrent `up`s never pick one slot."""
    clusters_dir().mkdir(parents=True, exist_ok=True)
    with open(clusters_dir() / ".network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _owner(link: dict[str, object]) -> str | None:
    """The cluster named by an interface's alias (how we mark what we created), else None."""
    alias = str(link.get("ifalias", ""))
    return alias[len(_OWNER_PREFIX):] if alias.startswith(_OWNER_PREFIX) else None


def in_use(cluster: str) -> tuple[list[ipaddress.IPv4Network], set[str]]:
    """What the host already uses: every IPv4 address (as /32), every route of /16 or narrower
    (wider ones are aggregates our narrower routes win over), the ranges other clusters
    reserved, and interface names. Our own cluster's link and its routes are not counted."""
    nets: list[ipaddress.IPv4Network] = []
    names: set[str] = set()
    ours: set[str] = set()
    for link in _ip_json("-d", "addr", "show"):
        names.add(str(link["ifname"]))
        if _owner(link) == cluster:
            ours.add(str(link["ifname"]))
            continue
        nets += [ipaddress.IPv4Network(a["local"]) for a in _addr_info(link) if a.get("family") == "inet"]
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", "default"))
        if dst == "default" or route.get("type", "unicast") != "unicast" or route.get("dev") in ours:
            continue
        net = ipaddress.IPv4Network(dst, strict=False)
        if net.prefixlen >= 16:
            nets.append(net)
    for _, root in other_clusters(cluster):
        other = recorded(root)
        if other is not None:
            nets += other.reserved()
            names |= other.names()
    return nets, names


def _addr_info(link: dict[str, object]) -> list[dict[str, str]]:
    """The addresses of one `ip -j addr` entry."""
    info = link.get("addr_info", [])
    return [dict(a) for a in info] if isinstance(info, list) else []


# --- a real node in its own network namespace -------------------------------------------------

def netns_path(cfg: ClusterConfig) -> Path:
    """The node's network namespace, bind-mounted on a file in the cluster directory (so
    `down`'s unmount of everything below the directory also ends the namespace)."""
    return cfg.root / "netns"


def _in_node(cfg: ClusterConfig) -> tuple[str, ...]:
    """Only the network namespace: mounts the kubelet makes must be seen by containerd and `down`."""
    return ("nsenter", f"--net={netns_path(cfg)}", "--")


def enter(cfg: ClusterConfig, net: Network) -> tuple[str, ...]:
    """The argv prefix that runs a node component inside the node's namespace (none: legacy)."""
    return _in_node(cfg) if net.netns else ()


def _ipn(cfg: ClusterConfig, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip` inside the node's namespace (`ip -n` only knows namespaces under /run/netns)."""
    return subprocess.run([*_in_node(cfg), "ip", *args], check=check, capture_output=True, text=True)


def _is_mountpoint(path: Path) -> bool:
    """Whether the namespace file is still bound (after a reboot the file stays, the mount not)."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _ensure_namespace(cfg: ClusterConfig) -> None:
    """A persistent network namespace bound on the cluster's file, unless one is bound already."""
    path = netns_path(cfg)
    if _is_mountpoint(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True)


def _ensure_link(cfg: ClusterConfig, net: Network) -> None:
    """The veth pair host <-> namespace; the host end's alias names its cluster."""
    host_link = str(net.host_link)
    found = _ip_json("-d", "link", "show", host_link)
    if found and _owner(found[0]) != cfg.name:
        raise NetworkBusy(f"interface {host_link} exists and is not cluster '{cfg.name}''s "
                          f"(alias {found[0].get('ifalias', '')!r})")
    if found and _ipn(cfg, "link", "show", _NODE_LINK, check=False).returncode != 0:
        _ip("link", "del", host_link)  # its other end is in a namespace that is gone (a reboot)
        found = []
    if not found:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", _NODE_LINK, "netns", str(netns_path(cfg)))
        _ip("link", "set", host_link, "alias", f"{_OWNER_PREFIX}{cfg.name}")


def _ensure_addr(ip: Callable[..., subprocess.CompletedProcess[str]], addr: str, dev: str) -> None:
    """Add `addr` (CIDR form) to `dev` unless it is there; `ip` runs ip on the host or in the node."""
    have = {f"{a['local']}/{a['prefixlen']}" for link in json.loads(ip("-j", "addr", "show", "dev", dev).stdout or "[]")
            for a in _addr_info(link)}
    if addr not in have:
        ip("addr", "add", addr, "dev", dev)


def ensure_node_network(cfg: ClusterConfig, net: Network) -> None:
    """Namespace, link, bridge, addresses, routes and the namespace's sysctls; idempotent."""
    assert net.netns and net.host_link and net.link_ip
    _ensure_namespace(cfg)
    _ensure_link(cfg, net)

    def ipn(*args: str) -> subprocess.CompletedProcess[str]:
        return _ipn(cfg, *args)

    if _ipn(cfg, "link", "show", net.bridge, check=False).returncode != 0:
        ipn("link", "add", net.bridge, "type", "bridge")
    _ensure_addr(ipn, f"{net.gateway}/{ipaddress.IPv4Network(net.pod_subnet).prefixlen}", net.bridge)
    _ensure_addr(ipn, f"{net.link_ip}/30", _NODE_LINK)
    _ensure_addr(_ip, f"{net.host_ip}/30", net.host_link)
    for dev in ("lo", _NODE_LINK, net.bridge):
        ipn("link", "set", dev, "up")
    _ip("link", "set", net.host_link, "up")
    ipn("route", "replace", "default", "via", net.host_ip, "dev", _NODE_LINK)
    for dst in (net.pod_subnet, net.service_cidr):
        _ip("route", "replace", dst, "via", net.link_ip, "dev", net.host_link)
    # Forwarding between link and bridge, and bridged pod traffic through kube-proxy's rules.
    for key in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        subprocess.run([*_in_node(cfg), "sysctl", "-qw", f"{key}=1"], capture_output=True)


def bridge_present(cfg: ClusterConfig, net: Network) -> bool:
    """Whether the node's bridge exists (in its namespace, or on the host for the legacy layout)."""
    if not net.netns:
        return bridge_owner() == cfg.name
    return _is_mountpoint(netns_path(cfg)) and _ipn(cfg, "link", "show", net.bridge, check=False).returncode == 0


def _host_link_ours(cfg: ClusterConfig, net: Network) -> bool:
    """Whether the host end of the link exists and carries our alias (never delete another's)."""
    found = _ip_json("-d", "link", "show", str(net.host_link)) if net.host_link else []
    return bool(found) and _owner(found[0]) == cfg.name


def delete_node_network(cfg: ClusterConfig, net: Network) -> None:
    """Remove this cluster's link (both ends; its routes go with it). The namespace ends when
    its file is unmounted with everything else under the cluster directory."""
    if _host_link_ours(cfg, net):
        _ip("link", "del", str(net.host_link), check=False)


def links_of(cluster: str) -> list[str]:
    """Host interfaces whose alias names `cluster` (its link, or its legacy bridge): found
    without the cluster's record, so they are found after `down` deleted it too."""
    return [str(link["ifname"]) for link in _ip_json("-d", "link", "show") if _owner(link) == cluster]


def link_leftovers(cluster: str) -> list[str]:
    """This cluster's host interfaces and the routes through them, if still there."""
    found = []
    for name in links_of(cluster):
        found.append(f"link {name}")
        found += [f"route {r.get('dst')} dev {name}" for r in _ip_json("-4", "route", "show", "dev", name)]
    return found


# --- the legacy layout: bridge md0 on the host -------------------------------------------------

def bridge_owner() -> str | None:
    """The cluster that owns the legacy bridge, "" if it exists without our alias, None if absent."""
    found = _ip_json("-d", "link", "show", BRIDGE)
    if not found:
        return None
    return _owner(found[0]) or ""


def ensure_bridge(cluster: str) -> None:
    """Create the legacy bridge with the gateway address, or adopt our own; refuse anybody else's."""
    owner = bridge_owner()
    if owner is not None and owner != cluster:
        who = f"cluster '{owner}'" if owner else "something outside modeldeploy"
        raise NetworkBusy(f"bridge {BRIDGE} ({SUBNET}) is used by {who}; only one cluster with the old "
                          f"layout can exist: `python -m localcluster --name {owner or '?'} down` first")
    if owner is None:
        _refuse_subnet_in_use()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("link", "set", BRIDGE, "alias", f"{_OWNER_PREFIX}{cluster}")
    prefix = ipaddress.ip_network(SUBNET).prefixlen
    _ensure_addr(_ip, f"{GATEWAY}/{prefix}", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def _refuse_subnet_in_use() -> None:
    net = ipaddress.ip_network(SUBNET)
    for link in json.loads(_ip("-j", "addr", "show").stdout):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and ipaddress.ip_address(a["local"]) in net:
                raise NetworkBusy(f"{SUBNET} is already on interface {link['ifname']}")


def delete_bridge(cluster: str) -> None:
    """Delete the veths still attached to the legacy bridge, then the bridge itself (only if ours)."""
    if bridge_owner() != cluster:
        return
    for link in json.loads(_ip("-j", "link", "show", "master", BRIDGE).stdout or "[]"):
        _ip("link", "del", link["ifname"], check=False)
    _ip("link", "del", BRIDGE, check=False)


# --- CNI -----------------------------------------------------------------------------------------

def cni_conflist(cluster: str, ipam_dir: Path, net: Network = LEGACY) -> dict[str, object]:
    """bridge (gateway, masquerade, hairpin, host-local IPAM) + portmap + loopback."""
    return {
        "cniVersion": "1.0.0",
        "name": network_name(cluster),
        "plugins": [
            {"type": "bridge", "bridge": net.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": net.pod_subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_cni_config(cluster: str, conf_dir: Path, ipam_dir: Path, net: Network = LEGACY) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cni_conflist(cluster, ipam_dir, net), indent=2)
    (conf_dir / "10-modeldeploy.conflist").write_text(text)


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
    """Legacy layout only: remove what kube-proxy's clean-up leaves on the host (CNI
    masquerade/hostport chains, stray KUBE-*).

    Runs after kube-proxy --cleanup. The bridge plugin's per-pod chains are found by the network
    name in their comments; the shared CNI-HOSTPORT-* chains and any KUBE-* chain are removed
    too: at most one legacy cluster exists, and clusters with a namespace keep theirs inside it.
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
