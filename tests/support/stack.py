"""The serving stack on a real-node cluster: images loaded, MinIO with the digits model, the chart
installed, a restricted namespace with the S3 credentials. Shared by the e2e tier and benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from localcluster import cluster as lc
from localcluster import objectstore
from tests.support import operator as op
from tests.support.cluster import ClusterHandle

ROOT = Path(__file__).resolve().parents[2]
VALIDATION_URI = "s3://models/digits/validation.npz"
# The chart values of the e2e stack. The admission policy stays on with its defaults except what
# the e2e tests need, set here explicitly: their deliberately bad models are python tarballs on S3
# without a sha256 (tests/e2e/test_canary.py, test_rollout_availability.py). Their images
# (localhost/modeldeploy-triton-cpu:dev and :late) are the chart's own repository, allowed by default.
# loaderImage stays at its default, the operator's image: serving pods run Triton only.
CHART_VALUES = ("image.repository=localhost/modeldeploy-operator", "image.tag=dev",
                "servingImage=localhost/modeldeploy-triton-cpu:dev", "resyncSeconds=5", "logLevel=INFO",
                "admissionPolicy.allowPythonModels=true", "admissionPolicy.requireSha256ForPython=false")


def prepare(tc: ClusterHandle, namespace: str, *chart_values: str) -> objectstore.Store:
    """Everything a ModelDeployment of the digits model needs in `namespace`; returns the store."""
    cfg = tc.local
    assert cfg is not None, "the serving stack runs on the local cluster's real node"
    archives = subprocess.run([str(ROOT / "hack" / "images" / "ensure.sh")], check=True, capture_output=True,
                              text=True).stdout.split()
    for archive in archives:
        lc.load_image(lc.effective(cfg), ROOT / archive)
    store = objectstore.up(cfg)
    for version in ("1", "2"):
        if store.exists(f"s3://models/digits/{version}/model.onnx") and store.exists(VALIDATION_URI):
            continue  # published for an earlier module on this cluster: training again adds nothing
        subprocess.run([sys.executable, str(ROOT / "hack" / "demo_digits.py"), "publish", "--cluster", cfg.name,
                        "--version", version], check=True, capture_output=True)
    op.install_chart(tc, *CHART_VALUES, *chart_values)
    try:
        tc.kubectl("rollout", "status", "deployment/modeldeploy", "-n", op.SYSTEM_NAMESPACE, "--timeout=120s")
    except AssertionError as e:
        raise AssertionError(f"{e}\ncluster state:\n{tc.state()}") from None
    tc.kubectl("create", "namespace", namespace)
    tc.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
              "stringData": store.secret_data()}
    tc.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(secret))
    return store
