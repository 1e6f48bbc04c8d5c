"""Pure parts of the local cluster tool: node manifests, certificates, process handling."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster import nodes, pki, process


def test_fake_nodes_have_gpu_capacity_and_kwok_annotation() -> None:
    made = nodes.fake_gpu_nodes(3, 8, "NVIDIA-H100-80GB-HBM3")
    assert [n["metadata"]["name"] for n in made] == ["kwok-gpu-0", "kwok-gpu-1", "kwok-gpu-2"]
    for n in made:
        assert n["metadata"]["annotations"][nodes.KWOK_ANNOTATION] == "fake"
        assert n["status"]["capacity"]["nvidia.com/gpu"] == "8"
        assert n["status"]["allocatable"] == n["status"]["capacity"]
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert len({n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in made}) == 3


def test_pki_issues_certs_signed_by_the_ca(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ("127.0.0.1", "kubernetes.default.svc"))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    admin.verify_directly_issued_by(ca)
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert (tmp_path / "sa.key").stat().st_mode & 0o077 == 0
    first = (tmp_path / "ca.crt").read_bytes()
    pki.ensure_pki(tmp_path, ("127.0.0.1",))  # second call reuses, never re-keys a live cluster
    assert (tmp_path / "ca.crt").read_bytes() == first


def test_process_start_and_stop_whole_group(tmp_path: Path) -> None:
    run, logs = tmp_path / "run", tmp_path / "logs"
    # A parent that spawns a child: stop() must take both down.
    script = ("import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
              " print('child-'+'started', flush=True); time.sleep(60)")
    pid = process.start(run, logs, "sleeper", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while "child-started" not in (logs / "sleeper.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.running(run, "sleeper")
    children = _children(pid)
    assert children
    process.stop(run, "sleeper", timeout=5)
    assert not process.alive(pid)
    assert not any(process.alive(c) for c in children)
    assert process.read_pid(run, "sleeper") is None


def _children(pid: int) -> list[int]:
    return [child for child, fields in process.proc_stats() if int(fields[1]) == pid]


def test_a_port_block_is_free_and_below_the_ephemeral_range() -> None:
    """The test operator's /metrics and /healthz (the next port): bound again after each restart,
    so never where an outgoing connection can take one meanwhile."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        base = process.free_port_block(2)
        assert base >= 20000 and base + 1 < min(low, 30000)
        for port in (base, base + 1):
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))
