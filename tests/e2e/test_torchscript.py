"""A TorchScript model on real pods: the loader converts it in the converter image (torch), takes
its input shape from spec.model.inputs, calibrates and gates int8 on spec.model.validationDataUri,
and Triton serves the result through the Service."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localcluster import cluster as lc
from tests.e2e.conftest import service_answers
from tests.support import serving_digits as sd
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.stack import ROOT, prepare

pytestmark = pytest.mark.e2e

NS = "torchscript-e2e"
MODEL_URI = "s3://models/digits-ts/1/model.pt"
DATA_URI = "s3://models/digits-ts/validation.npz"


@pytest.fixture(scope="module")
def published(real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """The converter image on the node, the stack in NS, a freshly trained TorchScript model in MinIO."""
    cfg = real_cluster.local
    assert cfg is not None
    archive = subprocess.run([str(ROOT / "hack" / "images" / "ensure.sh"), "--converter"], check=True,
                             capture_output=True, text=True).stdout.split()[-1]
    lc.load_image(lc.effective(cfg), ROOT / archive)
    store = prepare(real_cluster, NS)
    data = sd.load_digits()
    model = sd.train_cnn(data)
    with tempfile.TemporaryDirectory() as tmp:
        store.put(MODEL_URI, sd.save_torchscript(model, Path(tmp) / "model.pt").read_bytes())
        store.put(DATA_URI, sd.save_validation(data, Path(tmp) / "validation.npz").read_bytes())
    yield {"data": data, "torch_predictions": sd.predict(model, data.x_test).argmax(axis=1)}
    real_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _spec() -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits-ts"},
            "spec": {"model": {"name": "digits", "version": "1", "format": "torchscript",
                               "source": {"uri": MODEL_URI, "credentialsSecret": "s3-creds"},
                               "inputs": [{"name": "pixels", "dtype": "float32", "shape": [1, 8, 8]}],
                               "validationDataUri": DATA_URI,
                               "optimization": {"quantize": "int8", "minAgreement": 0.98},
                               "maxBatchSize": 32, "dynamicBatching": {"maxQueueDelayMicroseconds": 500}},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "3Gi"}}},
                     "replicas": 1}}


def test_torchscript_model_is_converted_quantized_and_served(real_cluster: ClusterHandle,
                                                             published: dict[str, Any]) -> None:
    import tritonclient.http as httpclient

    real_cluster.apply(_spec(), NS)

    def ready() -> dict[str, Any] | None:
        md = real_cluster.kubectl_json("get", "modeldeployment", "digits-ts", "-n", NS)
        st = md.get("status", {})
        return md if st.get("phase") == "Ready" and st.get("readyReplicas") == 1 else None

    began = time.monotonic()
    wait_for(ready, 400, interval=2, message="digits-ts Ready (conversion in the converter image)")
    print(f"\napply -> Ready (fetch, TorchScript -> ONNX, int8 gated, Triton warm): {time.monotonic() - began:.1f}s")
    pod = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l", "modeldeploy.io/name=digits-ts")["items"][0]
    loader = pod["spec"]["initContainers"][0]
    assert loader["image"] == "localhost/modeldeploy-converter:dev"
    assert pod["spec"]["containers"][0]["image"] == "localhost/modeldeploy-triton-cpu:dev"
    # int8 was calibrated and judged on the labelled validation data, not on generated inputs
    log = real_cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"], "-c", loader["name"]).stdout
    check = next((line for line in log.splitlines() if "int8 check on" in line), "")
    print(check)
    assert " samples of validation data: agreement " in check and "accuracy fp32 " in check, log[-2000:]

    ip = real_cluster.kubectl_json("get", "service", "digits-ts", "-n", NS)["spec"]["clusterIP"]
    url = f"{ip}:8000"
    wait_for(lambda: service_answers(url), 30, interval=0.5, message="kube-proxy routes the Service")
    client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=20)
    meta = client.get_model_metadata("digits")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("pixels", "FP32", [-1, 1, 8, 8])]
    params = client.get_model_config("digits").get("parameters", {})
    assert params.get("modeldeploy.quantization", {}).get("string_value") == "int8", params

    data = published["data"]
    preds = []
    for i in range(0, len(data.x_test), 32):
        inp = httpclient.InferInput("pixels", list(data.x_test[i:i + 32].shape), "FP32")
        inp.set_data_from_numpy(data.x_test[i:i + 32])
        out = client.infer("digits", [inp])
        preds.append(np.asarray(out.as_numpy(meta["outputs"][0]["name"])).argmax(axis=1))
    served = np.concatenate(preds)
    assert float((served == data.y_test).mean()) >= 0.95
    assert float((served == published["torch_predictions"]).mean()) >= 0.98
