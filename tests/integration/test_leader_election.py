"""Two operator processes with the chart's ServiceAccount and its Lease Role: one leads and
writes, the standby writes nothing; the leader killed (SIGKILL, no release) is replaced within
15 s and the new leader carries on from status; a clean stop hands the Lease over at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from localcluster import process
from tests.support import operator as op
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

pytestmark = pytest.mark.integration


def _replica(operator: Any, namespace: str, identity: str, work: Path) -> op.OperatorProcess:
    return op.OperatorProcess(
        kubeconfig=operator.kubeconfig, log_path=work / f"operator-{identity}.log",
        metrics_port=process.free_port_block(2),  # /metrics, and /healthz on the next port
        env={"MD_WATCH_NAMESPACES": namespace, "MD_LEADER_ELECTION_NAMESPACE": op.SYSTEM_NAMESPACE,
             "MD_LEADER_LEASE": op.LEASE, "MD_IDENTITY": identity, "MD_RESYNC_SECONDS": "1",
             "MD_AUTOSCALE_SECONDS": "1", "MD_METRICS_SOURCE": "prometheus",
             "MD_PROMETHEUS_URL": f"http://127.0.0.1:{process.free_port()}"})


def _writes(p: op.OperatorProcess) -> float:
    """Writes this replica sent, the Lease's own updates and creation apart."""
    return sum(p.metric("modeldeploy_api_writes_total", f'{{verb="{v}"}}')
               for v in ("apply", "patch_status", "patch", "scale", "delete"))


def _ready(tc: ClusterHandle, ns: str, name: str, replicas: int) -> bool:
    md = tc.kubectl_json("get", "modeldeployment", name, "-n", ns)
    st = md.get("status") or {}
    return (st.get("observedGeneration") == md["metadata"]["generation"] and st.get("phase") == "Ready"
            and st.get("readyReplicas") == replicas)


def test_one_leader_writes_and_a_killed_leader_is_replaced_within_15s(
        cluster: ClusterHandle, operator: Any, namespace: str, tmp_path: Path) -> None:
    operator.kill()  # the cluster-wide session operator would write too; the fixture restarts it
    cluster.kubectl("delete", "lease", op.LEASE, "-n", op.SYSTEM_NAMESPACE, "--ignore-not-found")
    a, b = _replica(operator, namespace, "replica-a", tmp_path), _replica(operator, namespace, "replica-b", tmp_path)
    try:
        a.start()
        wait_for(lambda: op.leader(cluster) == "replica-a", 20, interval=0.2, message="replica-a leading")
        b.start()
        cluster.apply(model_deployment("ha", replicas=2), namespace)
        wait_for(lambda: _ready(cluster, namespace, "ha", 2), 60, message="Ready through the leader")
        time.sleep(3)
        assert _writes(a) > 0
        assert _writes(b) == 0, "the standby wrote"
        assert b.metric("modeldeploy_leader") == 0 and a.metric("modeldeploy_leader") == 1

        a.kill()  # SIGKILL: no clean shutdown, the Lease is not released
        killed = time.monotonic()
        wait_for(lambda: op.leader(cluster) == "replica-b", 15, interval=0.2,
                 message="replica-b leading within 15 s of the leader's death")
        took_over = time.monotonic() - killed
        cluster.kubectl("patch", "modeldeployment", "ha", "-n", namespace, "--type=merge",
                        "-p", '{"spec":{"replicas":3}}')
        wait_for(lambda: _ready(cluster, namespace, "ha", 3), 30, message="the new leader carries on")
        assert _writes(b) > 0
        print(f"failover: replica-b led {took_over:.1f}s after replica-a was killed")

        # The killed replica comes back as a standby: it writes nothing and takes nothing. On a port of
        # its own again (a block below the ephemeral range, which no outgoing connection can take).
        a.metrics_port = process.free_port_block(2)
        a.start()
        time.sleep(5)
        assert op.leader(cluster) == "replica-b"
        assert _writes(a) == 0, "a restarted replica wrote while another one leads"

        # A clean stop releases the Lease: the standby leads at once, not after 12 s.
        stopped = time.monotonic()
        b.stop()
        wait_for(lambda: op.leader(cluster) == "replica-a", 5, interval=0.1,
                 message="replica-a leading at once after replica-b released the Lease")
        assert time.monotonic() - stopped < 5
        cluster.kubectl("patch", "modeldeployment", "ha", "-n", namespace, "--type=merge",
                        "-p", '{"spec":{"replicas":1}}')
        wait_for(lambda: _ready(cluster, namespace, "ha", 1), 30, message="replica-a carries on")
    finally:
        a.stop()
        b.stop()
        cluster.kubectl("delete", "lease", op.LEASE, "-n", op.SYSTEM_NAMESPACE, "--ignore-not-found")
