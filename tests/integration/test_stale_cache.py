"""A cache behind the cluster never causes a wrong write: the real API server refuses the stale
pass (409 on its resourceVersion precondition) and the retry reads fresh data.

The reconciler runs in this process with a watch cache that is filled once and never fed, so it
is as stale as a lagging watch can make it; the session operator is stopped meanwhile.
"""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import telemetry
from modeldeploy.config import Settings
from modeldeploy.kube.cache import WatchCache, relist
from modeldeploy.kube.client import Kube, load_api_client
from modeldeploy.reconciler import Reconciler
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

pytestmark = pytest.mark.integration


def _md(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", name, "-n", ns)


def _deployment(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    (dep,) = tc.kubectl_json("get", "deployments", "-n", ns, "-l", f"modeldeploy.io/name={name}")["items"]
    return dep


def _conflicts_retried() -> float:
    return telemetry.ERRORS.labels(type="ConflictRetried")._value.get()


def test_stale_modeldeployment_in_the_cache_writes_nothing_wrong(cluster: ClusterHandle, operator: Any,
                                                                 namespace: str) -> None:
    cluster.apply(model_deployment("stale", replicas=2), namespace)
    wait_for(lambda: _md(cluster, namespace, "stale").get("status", {}).get("phase") == "Ready", 60,
             message="Ready")
    operator.kill()  # the fixture starts it again for the next test

    kube = Kube(load_api_client(str(cluster.kubeconfig)))
    reconciler = Reconciler(kube, Settings(metrics_source="prometheus", prometheus_url="http://127.0.0.1:9"))
    reconciler.retry_failed_passes = False
    cache = WatchCache()
    relist(cache, kube, [namespace])
    reconciler.use_cache(cache)

    # Behind the cache's back: the user asks for 3 replicas, and (as a previous leader would) the
    # Deployment is already scaled to 3; the cache sees the Deployment but not the new spec.
    cluster.kubectl("patch", "modeldeployment", "stale", "-n", namespace, "--type=merge", "-p",
                    '{"spec":{"replicas":3}}')
    dep_name = _deployment(cluster, namespace, "stale")["metadata"]["name"]
    cluster.kubectl("scale", "deployment", dep_name, "-n", namespace, "--replicas=3")
    dep_generation = _deployment(cluster, namespace, "stale")["metadata"]["generation"]
    cache.replace("Deployment", namespace, kube.list("Deployment", namespace), None)
    cached = cache.get_or_none("ModelDeployment", namespace, "stale")
    assert cached is not None and cached["spec"]["replicas"] == 2  # the stale view the pass starts from

    before = _conflicts_retried()
    reconciler.request(namespace, "stale")

    # The stale pass would have scaled the Deployment back to 2; it was refused and retried fresh.
    assert _conflicts_retried() - before >= 1
    dep = _deployment(cluster, namespace, "stale")
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["generation"] == dep_generation, "the Deployment's spec was written"
    md = _md(cluster, namespace, "stale")
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert md["status"]["readyText"].endswith("/3")  # the new spec is what status describes
    # The retry's fresh read went into the cache: the next pass starts from the newest version.
    held = cache.get_or_none("ModelDeployment", namespace, "stale")
    assert held is not None and held["spec"]["replicas"] == 3


def test_status_written_behind_the_cache_is_not_overwritten(cluster: ClusterHandle, operator: Any,
                                                             namespace: str) -> None:
    """Status written behind the cache's back (as by a previous leader): the pass's status patch,
    computed from the older status, is refused (409), and the retry starts from the newer one."""
    cluster.apply(model_deployment("behind", replicas=1), namespace)
    wait_for(lambda: _md(cluster, namespace, "behind").get("status", {}).get("phase") == "Ready", 60,
             message="Ready")
    operator.kill()

    kube = Kube(load_api_client(str(cluster.kubeconfig)))
    reconciler = Reconciler(kube, Settings(metrics_source="prometheus", prometheus_url="http://127.0.0.1:9"))
    reconciler.retry_failed_passes = False
    cache = WatchCache()
    relist(cache, kube, [namespace])
    reconciler.use_cache(cache)

    # Behind the cache: someone scales the Deployment to 2 (kwok makes both pods Ready) and a
    # previous leader records something in status. The cache sees the pods, not the status.
    dep_name = _deployment(cluster, namespace, "behind")["metadata"]["name"]
    cluster.kubectl("scale", "deployment", dep_name, "-n", namespace, "--replicas=2")
    wait_for(lambda: sum(1 for p in kube.list("Pod", namespace, {"modeldeploy.io/name": "behind"})
                         if p.get("status", {}).get("phase") == "Running") == 2, 30, message="two pods")
    for kind in ("Deployment", "Pod"):
        cache.replace(kind, namespace, kube.list(kind, namespace), None)
    cluster.kubectl("patch", "modeldeployment", "behind", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", '{"status":{"message":"recorded by the previous leader"}}')
    stale = cache.get_or_none("ModelDeployment", namespace, "behind")
    assert stale is not None and stale["status"].get("message") != "recorded by the previous leader"

    before = _conflicts_retried()
    reconciler.request(namespace, "behind")
    assert _conflicts_retried() - before >= 1
    # The fresh pass healed the Deployment back to the spec's 1 replica.
    assert _deployment(cluster, namespace, "behind")["spec"]["replicas"] == 1
