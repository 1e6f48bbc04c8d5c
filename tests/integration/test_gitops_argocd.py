"""GitOps for real: Argo CD syncs ModelDeployments from Git while the operator runs them.

Argo CD's own application controller and repo server (the argocd binary of hack/versions/argocd,
built by hack/build-argocd.sh) and Redis run as local processes (tests/support/argocd.py) against
the kwok-tier cluster, reading a local Git repository through a file:// URL. The modeldeploy
operator runs with the chart's RBAC (the `operator` fixture); its Prometheus is silent, so a canary
gets no verdict by itself and is finished with the one-shot `modeldeploy.io/promote` annotation.

What a user of Argo CD would check, from `kubectl get application -o json`:
1. the first sync is Synced, and Healthy once the operator made the models Ready (the health check
   from docs/argocd-health.yaml, installed into argocd-cm);
2. the operator's reconciles (status writes, autoscaler decisions) never make it OutOfSync;
3. a new model version committed to Git is synced, shows as Progressing while its canary runs, and
   Healthy and still Synced after a promote given with kubectl (not from Git).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import argocd
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
APP = "models"
MD = "modeldeployment"
# Steps too long to end by themselves within the test and analysis that never runs: the canary
# stays at step 1 until the promote annotation.
ROLLOUT = {"strategy": "Canary", "maxSurgeGpus": 0,
           "steps": [{"weight": 25, "pause": "1h"}, {"weight": 50, "pause": "1h"}],
           "analysis": {"interval": "1h"}}
# Autoscaled: the operator's autoscaler decides 2 replicas (minReplicas) and writes it to status only;
# spec.replicas (1, from Git) is never touched.
AUTOSCALING = {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "metric": "queueTime", "target": "50ms"}


def digits(version: str) -> dict[str, Any]:
    # 4 replicas, no surge: step 1 is 1 canary pod + 3 stable pods, a weight of exactly 25%
    return model_deployment("digits", version=version, replicas=4, rollout=ROLLOUT,
                            uri=f"s3://models/digits/{version}/model.onnx")


def scaled() -> dict[str, Any]:
    return model_deployment("scaled", replicas=1, autoscaling=AUTOSCALING)


@pytest.fixture(scope="module")
def argo(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[argocd.ArgoCD]:
    """Argo CD installed into the cluster (CRDs, settings, project) and its components running."""
    argocd.install(cluster)
    began = time.monotonic()
    running = argocd.ArgoCD(kubeconfig=cluster.kubeconfig, workdir=tmp_path_factory.mktemp("argocd"),
                            log_dir=ARTIFACTS / "argocd")
    try:
        running.start()
    except BaseException:
        running.stop()
        raise
    print(f"argo cd components up in {time.monotonic() - began:.1f}s (logs: {running.log_dir})")
    yield running
    running.stop()


@pytest.fixture
def repo(tmp_path: Path) -> argocd.GitRepo:
    return argocd.GitRepo(tmp_path / "git")


@pytest.fixture
def app(request: pytest.FixtureRequest, cluster: ClusterHandle, argo: argocd.ArgoCD,
        namespace: str) -> Iterator[str]:
    """The Application's name; deleted (without cascading) before the namespace goes. On failure,
    the Application and the tails of the Argo CD logs go to test-artifacts/argocd/."""
    yield APP
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed:
        dump = cluster.kubectl("get", "applications,appprojects", "-n", argocd.NAMESPACE, "-o", "yaml", check=False)
        (argo.log_dir / "applications.yaml").write_text(dump.stdout + dump.stderr)
    cluster.kubectl("delete", "application", APP, "-n", argocd.NAMESPACE, "--ignore-not-found", "--wait=false",
                    check=False)


def _status(tc: ClusterHandle) -> dict[str, Any]:
    return argocd.get_application(tc, APP).get("status") or {}


def _summary(st: dict[str, Any]) -> str:
    return (f"sync={st.get('sync', {}).get('status')}@{str(st.get('sync', {}).get('revision'))[:8]} "
            f"health={st.get('health', {}).get('status')} ({st.get('health', {}).get('message', '')}) "
            f"operation={st.get('operationState', {}).get('phase')}: "
            f"{st.get('operationState', {}).get('message', '')} conditions={st.get('conditions')}")


def _wait_app(tc: ClusterHandle, argo: argocd.ArgoCD, revision: str, health: str, timeout: float,
              what: str) -> dict[str, Any]:
    """Wait until the Application is Synced to `revision` with `health`; fail with its status and logs."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        argo.check_running()
        last = _status(tc)
        sync = last.get("sync", {})
        if (sync.get("status") == "Synced" and sync.get("revision") == revision
                and last.get("health", {}).get("status") == health):
            return last
        return None

    try:
        return wait_for(reached, timeout, interval=1, message=what)
    except AssertionError as e:
        raise AssertionError(f"{e}\nApplication: {_summary(last)}\n{argo.log_tails()}") from None


def _resource_health(st: dict[str, Any], name: str) -> dict[str, Any]:
    """status.resources[].health of one ModelDeployment (the controller runs with --persist-resource-health)."""
    res = next((r for r in st.get("resources", []) if r["kind"] == "ModelDeployment" and r["name"] == name), {})
    return {k: v for k, v in (res.get("health") or {}).items() if k in ("status", "message")}


def _md(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", ns)


def _spec_managers(md: dict[str, Any]) -> set[str]:
    """Field managers owning anything under spec (metadata.managedFields)."""
    return {m["manager"] for m in md["metadata"].get("managedFields", [])
            if "f:spec" in (m.get("fieldsV1") or {}) and m.get("subresource") != "status"}


def test_argocd_syncs_and_stays_synced_through_a_canary(cluster: ClusterHandle, operator: Any, namespace: str,
                                                       argo: argocd.ArgoCD, repo: argocd.GitRepo, app: str) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    v1 = repo.commit({"apps/digits.yaml": digits("1"), "apps/scaled.yaml": scaled()}, "digits v1, scaled")
    cluster.apply(argocd.application(app, repo.url, "apps", namespace))

    # 1. Synced, and Healthy once the operator has made both models Ready.
    st = _wait_app(cluster, argo, v1, "Healthy", 180, "first sync Synced + Healthy")
    timings["first sync healthy"] = time.monotonic() - t0
    assert st["operationState"]["phase"] == "Succeeded", _summary(st)
    assert st["operationState"]["operation"]["initiatedBy"].get("automated") is True
    resources = {(r["kind"], r["name"]): r for r in st["resources"]}
    assert set(resources) == {("ModelDeployment", "digits"), ("ModelDeployment", "scaled")}, resources
    assert all(r["status"] == "Synced" for r in resources.values()), resources
    md = _md(cluster, namespace, "digits")
    assert md["status"]["phase"] == "Ready" and md["status"]["readyText"] == "4/4", md["status"]
    assert st["health"]["status"] == "Healthy"
    stable = md["status"]["stableRevision"]
    sc = _md(cluster, namespace, "scaled")
    assert sc["spec"]["replicas"] == 1 and sc["status"]["autoscaling"]["desiredReplicas"] == 2, sc["status"]

    # 2. The operator keeps reconciling (resync every second, autoscaler every second) and writes
    # status when a pod goes away and comes back; Argo CD, comparing every few seconds, never sees
    # a difference from Git.
    # Deleting its Deployment in the foreground takes every pod away before the Deployment goes (a
    # kwok pod replaced by its ReplicaSet can be Ready again before any pass sees it gone, and with a
    # background deletion the operator recreates the Deployment fast enough that the new ReplicaSet
    # adopts the old, still Ready pods: status never changes): the operator recreates the
    # Deployment and reports 0/4 then 4/4 ready in status, which Argo CD must not count as drift.
    dep = cluster.kubectl_json("get", "deployments", "-n", namespace, "-l", "modeldeploy.io/name=digits")["items"][0]
    cluster.kubectl("delete", "deployment", dep["metadata"]["name"], "-n", namespace, "--cascade=foreground",
                    "--wait=false")
    versions: dict[str, set[str]] = {"digits": set(), "scaled": set()}
    comparisons: set[str] = set()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        argo.check_running()
        st = _status(cluster)
        assert st.get("sync", {}).get("status") == "Synced", f"not Synced: {_summary(st)}"
        comparisons.add(str(st.get("reconciledAt")))
        for name, seen in versions.items():
            seen.add(_md(cluster, namespace, name)["metadata"]["resourceVersion"])
        time.sleep(1)
    assert len(comparisons) >= 3, f"Argo CD compared only {len(comparisons)} time(s) in 20 s: {comparisons}"
    assert len(versions["digits"]) >= 2, f"the operator wrote no status in 20 s: {versions}"
    st = _wait_app(cluster, argo, v1, "Healthy", 60, "Healthy again after the pod was replaced")
    for name in ("digits", "scaled"):
        obj = _md(cluster, namespace, name)
        assert _spec_managers(obj) <= {"argocd-controller"}, obj["metadata"]["managedFields"]
        assert "kopf.zalando.org/last-handled-configuration" not in obj["metadata"].get("annotations", {})
        assert not obj["metadata"].get("finalizers"), obj["metadata"]
    sc = _md(cluster, namespace, "scaled")
    assert sc["spec"]["replicas"] == 1 and sc["status"]["autoscaling"]["desiredReplicas"] == 2
    deps = cluster.kubectl_json("get", "deployments", "-n", namespace, "-l", "modeldeploy.io/name=scaled")["items"]
    assert [d["spec"]["replicas"] for d in deps] == [2]
    timings["stable window"] = time.monotonic() - t0
    print(f"stable window: {len(comparisons)} comparisons by Argo CD, "
          f"{ {n: len(v) for n, v in versions.items()} } resourceVersions of the ModelDeployments")

    # 3. A new model version in Git: synced, Progressing while the canary runs...
    t3 = time.monotonic()
    v2 = repo.commit({"apps/digits.yaml": digits("2")}, "digits v2")
    st = _wait_app(cluster, argo, v2, "Progressing", 120, "v2 synced, canary Progressing")
    timings["v2 synced (polling Git)"] = time.monotonic() - t3
    can = wait_for(lambda: (c := (_md(cluster, namespace, "digits").get("status", {}).get("canary") or {}))
                   .get("phase") == "Progressing" and c, 60, message="canary Progressing")
    assert can["revision"] != stable and can["step"] == 0 and can["weight"] == 25, can
    want = f"Canary {can['revision']}: step 1/2, weight 25%"

    def shows_canary() -> dict[str, Any] | None:
        s = _status(cluster)
        return s if _resource_health(s, "digits").get("message", "").startswith(want) else None

    st = wait_for(shows_canary, 60, message=f"the health check's message {want!r} in status.resources")
    assert st["health"]["status"] == "Progressing" and st["sync"]["status"] == "Synced", _summary(st)
    assert st["health"].get("message", "").endswith(f"ModelDeployment:{namespace}/digits"), _summary(st)
    assert _resource_health(st, "digits")["status"] == "Progressing"
    assert _resource_health(st, "scaled")["status"] == "Healthy"
    md = _md(cluster, namespace, "digits")
    assert md["spec"]["model"]["version"] == "2" and md["spec"]["model"]["source"]["uri"].endswith("/2/model.onnx")

    # ... and Healthy, still Synced, after a promote given with kubectl (a one-shot the operator removes).
    t4 = time.monotonic()
    cluster.kubectl("annotate", MD, "digits", "-n", namespace, "modeldeploy.io/promote=now")
    st = _wait_app(cluster, argo, v2, "Healthy", 120, "Healthy after promote")
    timings["healthy after promote"] = time.monotonic() - t4
    md = _md(cluster, namespace, "digits")
    assert md["status"]["stableRevision"] == can["revision"], md["status"]
    assert "modeldeploy.io/promote" not in md["metadata"].get("annotations", {})
    assert _resource_health(st, "digits") == {
        "status": "Healthy", "message": f"4/4 replicas ready (revision {can['revision']})"}, _summary(st)
    for _ in range(5):  # the operator's removal of the annotation does not put it out of sync
        time.sleep(1)
        st = _status(cluster)
        assert st["sync"]["status"] == "Synced" and st["health"]["status"] == "Healthy", _summary(st)
    history = [h["revision"] for h in st.get("history", [])]
    assert history[-2:] == [v1, v2], history
    (argo.log_dir / "timings.yaml").write_text(yaml.safe_dump({k: round(v, 1) for k, v in timings.items()}))
    print(f"timings: { {k: round(v, 1) for k, v in timings.items()} }")
