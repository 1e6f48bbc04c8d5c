"""Start, check and stop the control-plane processes of a local cluster.

Order: etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler -> kwok. Ports are
picked once (free loopback ports) and kept in state.json, so `up` is idempotent and a second
cluster can run beside the first.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from . import binaries, hostnet, kubeconfig, kwok_stages, netplan, pki, process, realnode
from .config import ClusterConfig
from .progress import say, step

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Reads and leader/heartbeat leases are noise; every other write is recorded (tests count them).
  - level: None
    verbs: [get, list, watch]
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
"""


@dataclass
class Ports:
    """Loopback ports of one cluster, chosen at first `up` and kept."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @staticmethod
    def pick() -> Ports:
        chosen: set[int] = set()
        values = []
        while len(values) < 6:
            p = process.free_port()
            if p not in chosen:
                chosen.add(p)
                values.append(p)
        return Ports(*values)


def load_ports(cfg: ClusterConfig) -> Ports | None:
    try:
        return Ports(**json.loads((cfg.root / "state.json").read_text())["ports"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def ensure_ports(cfg: ClusterConfig) -> Ports:
    ports = load_ports(cfg)
    if ports is None:
        ports = Ports.pick()
        cfg.root.mkdir(parents=True, exist_ok=True)
        (cfg.root / "state.json").write_text(json.dumps({"ports": asdict(ports)}, indent=2))
    return ports


def api_host(cfg: ClusterConfig) -> str:
    """Where the API server listens: loopback, or the host's address on the real node's network
    (the bridge's in the legacy layout) so pods reach it."""
    return hostnet.network(cfg).host_ip if cfg.real_node else "127.0.0.1"


def server_url(cfg: ClusterConfig, ports: Ports) -> str:
    return f"https://{api_host(cfg)}:{ports.apiserver}"


def _tls_context(cfg: ClusterConfig, client_stem: str | None = "admin") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.pki / "ca.crt"))
    if client_stem:
        ctx.load_cert_chain(str(cfg.pki / f"{client_stem}.crt"), str(cfg.pki / f"{client_stem}.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def healthy(cfg: ClusterConfig, component: str, ports: Ports) -> bool:
    """Whether a component answers its health endpoint (not merely that its process exists)."""
    if component == "etcd":
        code, body = _get(f"http://127.0.0.1:{ports.etcd_client}/health", None)
        return code == 200 and '"true"' in body
    if component == "kube-apiserver":
        return _get(f"{server_url(cfg, ports)}/readyz", _tls_context(cfg))[0] == 200
    if component == "kube-controller-manager":
        return _get(f"https://127.0.0.1:{ports.controller_manager}/healthz", _insecure())[0] == 200
    if component == "kube-scheduler":
        return _get(f"https://127.0.0.1:{ports.scheduler}/healthz", _insecure())[0] == 200
    if component == "kwok":
        return _get(f"http://127.0.0.1:{ports.kwok}/healthz", None)[0] == 200
    raise ValueError(component)


def _wait_healthy(cfg: ClusterConfig, component: str, ports: Ports, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    run = cfg.root / "run"
    while time.monotonic() < deadline:
        if healthy(cfg, component, ports):
            return
        if not process.running(run, component):
            raise RuntimeError(f"{component} exited; last log lines:\n{tail_log(cfg, component, 30)}")
        time.sleep(0.25)
    raise TimeoutError(f"{component} not healthy after {timeout:.0f}s; last log lines:\n"
                       f"{tail_log(cfg, component, 30)}")


def tail_log(cfg: ClusterConfig, component: str, lines: int) -> str:
    try:
        return "\n".join((cfg.logs / f"{component}.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _real_node_apiserver_args(cfg: ClusterConfig) -> list[str]:
    """logs/exec: reach the kubelet by its IP (node names are not in DNS here), verify its cert."""
    if not cfg.real_node:
        return []
    return ["--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            f"--kubelet-certificate-authority={cfg.pki / 'ca.crt'}"]


def _args(cfg: ClusterConfig, component: str, ports: Ports, bins: dict[str, Path]) -> list[str]:
    k = cfg.pki
    kc = cfg.root / "kubeconfigs"
    if component == "etcd":
        return [str(bins["etcd"]), "--name=etcd0", f"--data-dir={cfg.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                f"--initial-cluster=etcd0=http://127.0.0.1:{ports.etcd_peer}",
                "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn"]
    if component == "kube-apiserver":
        return [str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
                f"--bind-address={api_host(cfg)}", f"--advertise-address={api_host(cfg)}",
                f"--secure-port={ports.apiserver}",
                f"--tls-cert-file={k / 'apiserver.crt'}", f"--tls-private-key-file={k / 'apiserver.key'}",
                f"--client-ca-file={k / 'ca.crt'}",
                f"--kubelet-client-certificate={k / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={k / 'apiserver-kubelet-client.key'}",
                f"--service-account-key-file={k / 'sa.pub'}",
                f"--service-account-signing-key-file={k / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={hostnet.service_cidr(cfg)}",
                "--allow-privileged=true",
                # The `kubernetes` Service's endpoint is the advertised address; loopback is not a
                # valid endpoint, so kwok-only clusters keep none (nothing in them reaches it anyway).
                f"--endpoint-reconciler-type={'lease' if cfg.real_node else 'none'}",
                f"--audit-policy-file={cfg.root / 'audit-policy.yaml'}",
                f"--audit-log-path={cfg.logs / 'audit.log'}",
                "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
                *_real_node_apiserver_args(cfg),
                "--profiling=false", "--v=1", *cfg.extra_apiserver_args]
    if component == "kube-controller-manager":
        kcfg = kc / "controller-manager.kubeconfig"
        return [str(bins["kube-controller-manager"]), f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}",
                f"--service-account-private-key-file={k / 'sa.key'}", f"--root-ca-file={k / 'ca.crt'}",
                f"--cluster-signing-cert-file={k / 'ca.crt'}", f"--cluster-signing-key-file={k / 'ca.key'}",
                "--use-service-account-credentials=true", "--leader-elect=false",
                f"--service-cluster-ip-range={hostnet.service_cidr(cfg)}", "--profiling=false", "--v=1"]
    if component == "kube-scheduler":
        kcfg = kc / "scheduler.kubeconfig"
        return [str(bins["kube-scheduler"]), f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1", f"--secure-port={ports.scheduler}",
                "--leader-elect=false", "--profiling=false", "--v=1"]
    if component == "kwok":
        return [str(bins["kwok"]), f"--kubeconfig={kc / 'kwok.kubeconfig'}",
                f"--config={kwok_stages.write(cfg)}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={cfg.pod_cidr}", "--node-ip=10.255.0.1", "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{ports.kwok}"]
    raise ValueError(component)


_KUBECONFIG_OF = {"kube-controller-manager": "controller-manager", "kube-scheduler": "scheduler", "kwok": "kwok"}


def _prepare(cfg: ClusterConfig, ports: Ports) -> set[str]:
    """Certificates, kubeconfigs, audit policy; return the components whose inputs changed
    (e.g. `up --real-node` on an existing cluster moves the API server to the bridge address)."""
    names: tuple[str, ...] = ("127.0.0.1", "localhost", netplan.first_host(hostnet.service_cidr(cfg)), "kubernetes",
                              "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
    cert = cfg.pki / "apiserver.crt"
    cert_before = cert.read_bytes() if cert.exists() else b""
    if cfg.real_node:
        names = (*names, api_host(cfg))
        pki.ensure_pki(cfg.pki, names, realnode.client_identities(cfg), realnode.serving_certs(cfg))
    else:
        pki.ensure_pki(cfg.pki, names)
    changed = {"kube-apiserver"} if cert_before and cert.read_bytes() != cert_before else set()
    (cfg.root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    server = server_url(cfg, ports)
    for component, stem in _KUBECONFIG_OF.items():
        path = cfg.root / "kubeconfigs" / f"{stem}.kubeconfig"
        text = kubeconfig.render(server, cfg.pki, stem, cfg.name)
        if path.exists() and path.read_text() != text:
            changed.add(component)
        kubeconfig.write(path, text)
    kubeconfig.write(cfg.kubeconfig, kubeconfig.render(server, cfg.pki, "admin", cfg.name))
    return changed


def up(cfg: ClusterConfig) -> Ports:
    """Start whatever is not running and healthy, or runs with other settings; leave the rest alone."""
    bins = binaries.ensure(*binaries.CONTROL_PLANE)
    ports = ensure_ports(cfg)
    changed = _prepare(cfg, ports)
    run = cfg.root / "run"
    for component in COMPONENTS:
        argv = _args(cfg, component, ports, bins)
        if process.running(run, component) and healthy(cfg, component, ports):
            if process.cmdline(run, component) == argv and component not in changed:
                say(f"{component} already running")
                continue
            say(f"{component} runs with other settings: restarting it")
        process.stop(run, component, timeout=2.0 if component == "kube-apiserver" else 10.0)
        with step(f"starting {component}"):
            process.start(run, cfg.logs, component, argv)
            _wait_healthy(cfg, component, ports, timeout=90 if component == "kube-apiserver" else 60)
    return ports


def down(cfg: ClusterConfig) -> None:
    """Stop every process of the cluster, in reverse start order."""
    run = cfg.root / "run"
    # Anything else started beside the cluster (the demo's operator, a MinIO) goes first.
    extras = sorted(p.stem for p in run.glob("*.pid") if p.stem not in COMPONENTS) if run.exists() else []
    for name in [*extras, *reversed(COMPONENTS)]:
        # The API server's graceful termination stalls ~10 s after AfterShutdownDelayDuration; it
        # keeps no state of its own (etcd does), so it gets 2 s before SIGKILL.
        process.stop(run, name, timeout=2.0 if name == "kube-apiserver" else 10.0)


def status(cfg: ClusterConfig) -> dict[str, str]:
    ports = load_ports(cfg)
    run = cfg.root / "run"
    out = {}
    for component in COMPONENTS:
        if not process.running(run, component):
            out[component] = "stopped"
        elif ports is not None and healthy(cfg, component, ports):
            out[component] = f"healthy (pid {process.read_pid(run, component)})"
        else:
            out[component] = f"unhealthy (pid {process.read_pid(run, component)})"
    return out
