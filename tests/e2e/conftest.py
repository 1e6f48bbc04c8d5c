"""The serving stack the e2e tests share: images, MinIO with models, the chart, a namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import ClusterHandle
from tests.support.stack import prepare


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """Images loaded, MinIO with two model versions, the chart installed, a restricted namespace.

    Per test module (its `NS`, and its `CHART_VALUES` when it has them): a module may follow one that
    took the real node down and up again.
    """
    ns = request.module.NS
    store = prepare(real_cluster, ns, *getattr(request.module, "CHART_VALUES", ()))
    yield {"store": store}
    real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def operator_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed e2e test, print the cluster's state and each operator pod's last log lines:
    CI keeps only pytest's report, and the operator's decisions are what explain a rollout that did
    not finish."""
    yield
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if "real_cluster" not in request.fixturenames or not failed:
        return
    from tests.support.operator import SYSTEM_NAMESPACE

    tc: ClusterHandle = request.getfixturevalue("real_cluster")
    print(f"----- cluster state after the failure -----\n{tc.state()}")
    pods = tc.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l", "app.kubernetes.io/name=modeldeploy-operator",
                      "-o", "name", check=False).stdout.split()
    for pod in pods:
        out = tc.kubectl("logs", pod, "-n", SYSTEM_NAMESPACE, "--tail=150", check=False)
        print(f"----- {pod} (last 150 lines) -----\n{out.stdout}{out.stderr}")


def service_answers(url: str) -> bool:
    """Whether Triton behind `url` (a Service's ClusterIP:port) answers that the digits model is
    ready: status Ready comes before kube-proxy has programmed the Service."""
    import tritonclient.http as httpclient

    try:
        return bool(httpclient.InferenceServerClient(url, connection_timeout=2).is_model_ready("digits"))
    except Exception:
        return False
