"""Which addresses and names a cluster's real node gets: a pure choice, so it can be table-tested.

Every real node lives in a network namespace of its own (kube-proxy owns the global KUBE-*
chains of the namespace it runs in, so two kube-proxies cannot share one). A cluster reserves
one /24 of 10.244.0.0/16, its "slot", picked from a hash of its name and moved to the next slot
while anything on the host already uses part of it (an address, a route, another cluster's
record). Slot s holds:

    10.244.s.0/25     pods; the bridge md-<tag> (in the node's namespace) has .1, the node's IP
    10.244.s.252/30   the link between host and node namespace: host end mdh-<tag> is .253 (the
                      API server and MinIO bind there), node end is .254
    10.97.s.0/24      Services, routed from the host into the node namespace (unless the cluster
                      asks for a range of its own, e.g. the conventional 10.96.0.0/16)

Clusters made before namespaces were used keep their layout (LEGACY: bridge md0 on the host).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass

POD_SPACE = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_SPACE = ipaddress.IPv4Network("10.97.0.0/16")
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
SLOTS = 256
_TAG_ATTEMPTS = 64


class NetworkBusy(RuntimeError):
    """The wanted addresses or names belong to something else (another cluster, the host)."""


@dataclass(frozen=True)
class Network:
    """One real node's addresses and interface names, recorded in the cluster's state."""

    block: str  # the /24 this cluster reserves on the host
    pod_subnet: str
    gateway: str  # the bridge's address: the pods' default gateway and the node's IP
    host_ip: str  # where the API server and MinIO listen on the host
    link_ip: str | None  # node end of the host<->namespace link (None: legacy, no namespace)
    bridge: str
    host_link: str | None  # host end of that link (None: legacy)
    service_cidr: str
    netns: bool = True

    @property
    def node_ip(self) -> str:
        return self.gateway

    @property
    def health_host(self) -> str:
        """Where the node components' health endpoints listen (reachable from the host)."""
        return self.node_ip if self.netns else "127.0.0.1"

    @property
    def link_cidr(self) -> str | None:
        """The /30 holding both ends of the link."""
        return None if self.link_ip is None else str(ipaddress.ip_interface(f"{self.link_ip}/30").network)

    def reserved(self) -> list[ipaddress.IPv4Network]:
        """Address ranges nobody else may use while this cluster exists. A legacy cluster's
        Services are not routed (kube-proxy DNATs only its own Service IPs on the host)."""
        nets = [ipaddress.IPv4Network(self.block)]
        if self.netns:
            nets.append(ipaddress.IPv4Network(self.service_cidr))
        return nets

    def names(self) -> set[str]:
        return {n for n in (self.bridge, self.host_link) if n}

    def describe(self) -> str:
        where = f"in its own network namespace, host link {self.host_link}" if self.netns else "on the host"
        return (f"bridge {self.bridge} {where}; pods {self.pod_subnet} (node {self.node_ip}), "
                f"Services {self.service_cidr}, API server on {self.host_ip}")


LEGACY = Network(block="10.244.7.0/24", pod_subnet="10.244.7.0/24", gateway="10.244.7.1", host_ip="10.244.7.1",
                 link_ip=None, bridge="md0", host_link=None, service_cidr=DEFAULT_SERVICE_CIDR, netns=False)


def first_host(cidr: str) -> str:
    """The first usable address of a range: the `kubernetes` Service's ClusterIP."""
    return str(ipaddress.IPv4Network(cidr).network_address + 1)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def preferred_slot(cluster: str) -> int:
    """The slot a name maps to when nothing is in the way (stable across machines)."""
    return int.from_bytes(_digest(cluster)[:4], "big") % SLOTS


def tag(cluster: str, attempt: int = 0) -> str:
    """Six hex digits for interface names (IFNAMSIZ allows 15 characters: "mdh-" + 6 fits)."""
    return _digest(cluster if attempt == 0 else f"{cluster}#{attempt}").hex()[:6]


def layout(slot: int, tag_: str, service_cidr: str | None = None) -> Network:
    """The addresses of slot `slot`, the names of `tag_` (see the module docstring)."""
    block = list(POD_SPACE.subnets(new_prefix=24))[slot]
    base = block.network_address
    return Network(block=str(block), pod_subnet=f"{base}/25", gateway=str(base + 1), host_ip=str(base + 253),
                   link_ip=str(base + 254), bridge=f"md-{tag_}", host_link=f"mdh-{tag_}",
                   service_cidr=service_cidr or str(list(SERVICE_SPACE.subnets(new_prefix=24))[slot]))


def _overlaps(nets: Iterable[ipaddress.IPv4Network], taken: Collection[ipaddress.IPv4Network]) -> bool:
    return any(n.overlaps(t) for n in nets for t in taken)


def _free_tag(cluster: str, taken_names: Collection[str]) -> str:
    for attempt in range(_TAG_ATTEMPTS):
        t = tag(cluster, attempt)
        if f"md-{t}" not in taken_names and f"mdh-{t}" not in taken_names:
            return t
    raise NetworkBusy(f"no free interface name for cluster '{cluster}'")


def choose(cluster: str, taken: Collection[ipaddress.IPv4Network], taken_names: Collection[str] = (),
           service_cidr: str | None = None) -> Network:
    """The network of a new real node: the name's slot, or the next one free of `taken`.

    `taken`: ranges in use on the host (addresses as /32, routes, other clusters' reservations);
    `taken_names`: interface names in use. `service_cidr` pins the Service range (then it must be
    free); otherwise each slot brings its own.
    """
    if service_cidr and _overlaps([ipaddress.IPv4Network(service_cidr)], taken):
        raise NetworkBusy(f"Service range {service_cidr} for cluster '{cluster}' is already used on this host "
                          "(by another cluster's Services or an address/route)")
    start = preferred_slot(cluster)
    for i in range(SLOTS):
        candidate = layout((start + i) % SLOTS, "000000", service_cidr)
        if not _overlaps(candidate.reserved(), taken):
            return layout((start + i) % SLOTS, _free_tag(cluster, taken_names), service_cidr)
    raise NetworkBusy(f"no free /24 left in {POD_SPACE} (with its Service range) for cluster '{cluster}'")
