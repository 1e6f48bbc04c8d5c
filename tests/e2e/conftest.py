"""The serving stack the e2e tests share: images, MinIO with models, the chart, a namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import cluster as lc
from localcluster import objectstore
from tests.support import operator as op
from tests.support.cluster import ClusterHandle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """Images loaded, MinIO with two model versions, the chart installed, a restricted namespace.

    Per test module (its `NS`): a module may follow one that took the real node down and up again.
    """
    NS = request.module.NS
    cfg = real_cluster.local
    assert cfg is not None, "the e2e tier runs on the local cluster's real node"
    archives = subprocess.run([str(ROOT / "hack" / "images" / "ensure.sh")], check=True, capture_output=True,
                              text=True).stdout.split()
    for archive in archives:
        lc.load_image(lc.effective(cfg), ROOT / archive)
    store = objectstore.up(cfg)
    for version in ("1", "2"):
        subprocess.run([sys.executable, str(ROOT / "hack" / "demo_digits.py"), "publish", "--cluster", cfg.name,
                        "--version", version], check=True, capture_output=True)
    op.install_chart(real_cluster, "image.repository=localhost/modeldeploy-operator", "image.tag=dev",
                     "servingImage=localhost/modeldeploy-triton-cpu:dev", "resyncSeconds=5", "logLevel=INFO")
    real_cluster.kubectl("rollout", "status", "deployment/modeldeploy", "-n", op.SYSTEM_NAMESPACE, "--timeout=120s")
    real_cluster.kubectl("create", "namespace", NS)
    real_cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
              "stringData": store.secret_data()}
    real_cluster.kubectl("apply", "-n", NS, "-f", "-", input_text=json.dumps(secret))
    yield {"store": store}
    real_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)




def service_answers(url: str) -> bool:
    """Whether Triton behind `url` (a Service's ClusterIP:port) answers that the digits model is
    ready: status Ready comes before kube-proxy has programmed the Service."""
    import tritonclient.http as httpclient

    try:
        return bool(httpclient.InferenceServerClient(url, connection_timeout=2).is_model_ready("digits"))
    except Exception:
        return False
