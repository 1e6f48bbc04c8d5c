"""Run the operator as a real process, with the Helm chart's ServiceAccount and RBAC.

The chart is installed with real `helm install`; the operator then runs locally (so tests can
kill and restart it) with a kubeconfig holding a token of the chart's ServiceAccount, so a
permission the chart lacks fails the tests exactly as it would in a cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from localcluster import binaries, kubeconfig
from tests.support.cluster import ClusterHandle, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
RELEASE = "modeldeploy"
SYSTEM_NAMESPACE = "modeldeploy-system"
OBJECT_RECONCILES = "modeldeploy_object_reconciles_total"  # per ModelDeployment, from modeldeploy.telemetry


def helm(tc: ClusterHandle, *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(binaries.path_of("helm")) if binaries.path_of("helm").exists() else "helm"
    proc = subprocess.run([exe, f"--kubeconfig={tc.kubeconfig}", *args], text=True, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def install_chart(tc: ClusterHandle, *set_args: str) -> None:
    """helm upgrade --install the chart (CRD included) into modeldeploy-system."""
    helm(tc, "upgrade", "--install", RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE, "--create-namespace",
         "--wait=false", *[a for s in set_args for a in ("--set", s)])
    tc.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io", "--timeout=60s")


def service_account_kubeconfig(tc: ClusterHandle, dest: Path) -> Path:
    """A kubeconfig authenticating as the chart's ServiceAccount (a real, short-lived token)."""
    token = tc.kubectl("create", "token", RELEASE, "-n", SYSTEM_NAMESPACE, "--duration=4h").stdout.strip()
    cfg = json.loads(tc.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = cfg["clusters"][0]["cluster"]["server"]
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
    kubeconfig.write(dest, kubeconfig.render_token(server, ca, token, "test", f"{SYSTEM_NAMESPACE}:{RELEASE}"))
    return dest


@dataclass
class OperatorProcess:
    """`python -m modeldeploy run` as a child process; kill() simulates a crash."""

    kubeconfig: Path
    log_path: Path
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # how long /metrics may take to answer: the first LIST of every kind comes before it, a minute
    # with thousands of objects in the cluster (benchmarks/control_plane.py)
    start_timeout_s: float = 30

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), MD_METRICS_PORT=str(self.metrics_port), **self.env)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "modeldeploy", "run", "--log-format", "json"],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(self._metrics_up, self.start_timeout_s, message="operator /metrics answering")

    def _metrics_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)}\s+([0-9.e+-]+)$", re.M)
        total = 0.0
        for m in pattern.finditer(self.metrics()):
            total += float(m.group(1))
        return total

    def reconciles_of(self, namespace: str, name: str) -> float:
        """Completed reconcile passes of one ModelDeployment by this process (0 before its first)."""
        return sum(s.value for f in text_string_to_metric_families(self.metrics()) for s in f.samples
                   if s.name == OBJECT_RECONCILES and s.labels.get("namespace") == namespace
                   and s.labels.get("name") == name)

    def wait_for_reconciles(self, namespace: str, names: Iterable[str], passes: int = 1,
                            timeout: float = 60) -> None:
        """Wait until this process has completed `passes` reconcile passes of each named object.

        After a restart, "nothing changed" holds only once the new process has looked at the
        object; a fixed sleep either wastes time or passes before it did. The counter is per
        process and counts only finished passes (incremented after the last write of a pass).
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pending = list(names)
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            pending = [n for n in pending if self.reconciles_of(namespace, n) < passes]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s: {passes} completed reconcile pass(es) of "
                                     f"{pending} in {namespace} by the operator:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a node failure or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until_gone(proc: OperatorProcess, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while proc.proc and proc.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


LEASE = f"{RELEASE}-leader"


def leader(tc: ClusterHandle) -> str:
    """The operator pod that holds the leader Lease ('' when nobody does)."""
    out = tc.kubectl("get", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return ""
    return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "")


def kill_leader(tc: ClusterHandle, timeout: float = 15) -> tuple[str, str, float]:
    """Force-delete the leading operator pod (no clean shutdown, so no Lease release) and wait for
    another replica to take the Lease; (old leader, new leader, seconds from kill to takeover).

    A kill that found no leader, or a takeover slower than `timeout`, fails the calling test."""
    old = leader(tc)
    assert old, "no operator replica holds the leader Lease"
    pods = {p["metadata"]["name"] for p in tc.kubectl_json(
        "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", "app.kubernetes.io/name=modeldeploy-operator")["items"]}
    assert old in pods, f"the Lease names {old}, not one of the operator pods {sorted(pods)}"
    began = time.monotonic()
    out = tc.kubectl("delete", "pod", old, "-n", SYSTEM_NAMESPACE, "--grace-period=0", "--force",
                     "--wait=false").stdout
    assert "deleted" in out, f"the leader {old} was not deleted: {out!r}"
    wait_for(lambda: leader(tc) not in ("", old), timeout, interval=0.2,
             message=f"another operator replica leading within {timeout:.0f}s of killing {old}")
    return old, leader(tc), time.monotonic() - began
