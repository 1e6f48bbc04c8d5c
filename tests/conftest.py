"""Shared fixtures: one cluster per test session, a fresh namespace per test, logs kept on failure."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT))

from tests.support import cluster as cluster_support  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"

# Under CI (CI=true), a skipped test or a tier that ran nothing fails the run: see its docstring.
pytest_plugins = ["tests.support.ci_guard"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's outcome on the item, so fixtures know whether their test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[cluster_support.ClusterHandle]:
    tc = cluster_support.start(os.environ.get("MD_TEST_CLUSTER", "pytest"))
    yield tc
    cluster_support.stop(tc)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: cluster_support.ClusterHandle) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards; on failure, its objects and the
    cluster components' logs are saved under test-artifacts/<test>/."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    cluster_support.wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30, message=f"default ServiceAccount in {name}")
    yield name
    if _failed(request):
        dest = ARTIFACTS / slug
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        dump = cluster.kubectl("get", "all,events,modeldeployments,pdb,cm", "-n", name, "-o", "yaml", check=False)
        (dest / "namespace.yaml").write_text(dump.stdout + dump.stderr)
        if cluster.local is not None:
            from localcluster import cluster as lc

            lc.collect_logs(cluster.local, dest / "logs")
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def chart_installed(cluster: cluster_support.ClusterHandle) -> cluster_support.ClusterHandle:
    """The Helm chart installed for real (CRD, ServiceAccount, RBAC, the operator Deployment)."""
    from tests.support import operator as op

    op.install_chart(cluster)
    return cluster


@pytest.fixture(scope="session")
def _operator_session(chart_installed: cluster_support.ClusterHandle,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from localcluster import process
    from tests.support import operator as op

    work = tmp_path_factory.mktemp("operator")
    kubeconfig = op.service_account_kubeconfig(chart_installed, work / "sa.kubeconfig")
    proc = op.OperatorProcess(kubeconfig=kubeconfig, log_path=ARTIFACTS / "operator.log",
                              metrics_port=process.free_port_block(2), env={
                                  "MD_RESYNC_SECONDS": "1", "MD_AUTOSCALE_SECONDS": "1",
                                  "MD_LOG_LEVEL": os.environ.get("MD_TEST_OPERATOR_LOG_LEVEL", "INFO"),
                                  # kwok pods' IPs are fake: never scrape them. A Prometheus that
                                  # does not answer is what this tier sees: canary metrics missing.
                                  "MD_METRICS_SOURCE": "prometheus",
                                  "MD_PROMETHEUS_URL": f"http://127.0.0.1:{process.free_port()}"})
    ARTIFACTS.mkdir(exist_ok=True)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def operator(_operator_session: object) -> object:
    """The operator process (restarted if an earlier test killed it)."""
    proc = _operator_session
    if proc.proc is None or proc.proc.poll() is not None:  # type: ignore[attr-defined]
        proc.start()  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[cluster_support.ClusterHandle]:
    """A local cluster whose one node is real (pods run in containerd), for the e2e tier.

    Needs root (bridge, iptables, mounts, cgroups) and containerd/runc/CNI plugins on the host
    (`make system`). MD_KEEP_CLUSTER=1 keeps it after the session; `down` otherwise, which fails
    the session if anything (process, mount, chain, bridge, cgroup) is left behind.
    """
    if os.geteuid() != 0:
        pytest.skip("the real node needs root (bridge, iptables, mounts, cgroups)")
    missing = [t for t in ("containerd", "runc", "ctr", "iptables", "gcc") if shutil.which(t) is None]
    if missing or not Path("/usr/lib/cni/bridge").exists():
        pytest.skip(f"real node prerequisites missing: {missing or ['/usr/lib/cni']} (run `make system`)")
    began = time.monotonic()
    tc = cluster_support.start_real_node(os.environ.get("MD_TEST_REAL_CLUSTER", "pytest-e2e"))
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "real-node-timings.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} real_cluster up {time.monotonic() - began:.1f}s\n")
    yield tc
    cluster_support.stop(tc)
