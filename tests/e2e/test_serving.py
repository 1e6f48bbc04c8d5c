"""Real pods end to end: the operator installed with Helm runs as a pod, Triton serves a digits
model fetched from MinIO, and inference goes through the Service (kube-proxy) on the real node."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import service_answers
from tests.support.cluster import ClusterHandle, wait_for

pytestmark = pytest.mark.e2e

NS = "serving-e2e"

MD = "modeldeployment"


def _spec(version: str, uri: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
            "spec": {"model": {"name": "digits", "version": version,
                               "source": {"uri": uri, "credentialsSecret": "s3-creds"},
                               "format": "onnx", "maxBatchSize": 32,
                               "dynamicBatching": {"maxQueueDelayMicroseconds": 500}},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": replicas,
                     # A version change is a canary: one short step judged on 3 s windows.
                     "rollout": {"maxSurgeGpus": 1, "steps": [{"weight": 50, "pause": "3s"}],
                                 "analysis": {"interval": "3s", "minRequests": 10, "maxLatencyRatio": 3.0}}}}


def _md(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, "digits", "-n", NS)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _ready(tc: ClusterHandle, timeout: float = 240) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        md = _md(tc)
        st = md.get("status", {})
        done = st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
        return md if done and st.get("readyReplicas") == md["spec"]["replicas"] else None
    return wait_for(ok, timeout, interval=1, message="digits Ready")


def _url(tc: ClusterHandle) -> str:
    ip = tc.kubectl_json("get", "service", "digits", "-n", NS)["spec"]["clusterIP"]
    return f"{ip}:8000"


def _classify(url: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=5, network_timeout=10)
    inp = httpclient.InferInput("input_0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("digits", [inp])
    name = client.get_model_metadata("digits")["outputs"][0]["name"]
    return np.asarray(out.as_numpy(name)).argmax(axis=1)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from tests.support import serving_digits as sd

    d = sd.load_digits()
    return d.x_test, d.y_test


def test_model_is_served_through_the_service(real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    real_cluster.apply(_spec("1", "s3://models/digits/1/model.onnx"), NS)
    md = _ready(real_cluster)
    wait_for(lambda: service_answers(_url(real_cluster)), 30, interval=0.5, message="kube-proxy routes the Service")
    assert md["status"]["endpoint"]["http"] == f"http://digits.{NS}.svc:8000/v2/models/digits"
    assert {c["type"]: c["status"] for c in md["status"]["conditions"]} == {
        "Ready": "True", "ModelLoaded": "True", "Progressing": "False", "Degraded": "False"}
    pods = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l", "modeldeploy.io/name=digits")["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True  # admitted under "restricted"
    # The defaults: the loader runs from the operator's image, Triton from a serving image that
    # holds none of modeldeploy's code (as NVIDIA's stock image would on a GPU node).
    spec = pods[0]["spec"]
    assert [c["image"] for c in spec["initContainers"]] == ["localhost/modeldeploy-operator:dev"]
    assert [c["image"] for c in spec["containers"]] == ["localhost/modeldeploy-triton-cpu:dev"]
    probe = real_cluster.kubectl("exec", "-n", NS, pods[0]["metadata"]["name"], "-c", "triton", "--", "python3", "-c",
                                 "import importlib.util as u; print(u.find_spec('modeldeploy') is None)")
    assert probe.stdout.strip() == "True", probe.stdout
    x, y = _digits()
    correct = 0
    for i in range(0, len(x), 32):
        correct += int((_classify(_url(real_cluster), x[i:i + 32]) == y[i:i + 32]).sum())
    assert correct / len(x) >= 0.95


def test_version_change_loses_no_request(real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    first = _ready(real_cluster)["status"]["stableRevision"]
    url, (x, _) = _url(real_cluster), _digits()
    results = {"ok": 0, "failed": 0, "errors": []}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                _classify(url, x[:8])
                results["ok"] += 1
            except Exception as e:  # every failure counts: this is what a user's client sees
                results["failed"] += 1
                results["errors"].append(str(e)[:200])
            time.sleep(0.02)

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    try:
        time.sleep(1)
        real_cluster.apply(_spec("2", "s3://models/digits/2/model.onnx"), NS)
        wait_for(lambda: _md(real_cluster)["status"].get("stableRevision") not in (None, first), 240, interval=1,
                 message="new revision promoted")
        md = _ready(real_cluster)
        wait_for(lambda: len(real_cluster.kubectl_json("get", "pods", "-n", NS, "-l",
                                                        f"modeldeploy.io/revision={first}")["items"]) == 0,
                 120, interval=1, message="old pods drained and gone")
        time.sleep(2)
    finally:
        stop.set()
        sender.join(10)
    assert md["spec"]["model"]["version"] == "2"
    assert results["ok"] > 50
    assert results["failed"] == 0, results["errors"][:5]


def test_broken_uri_reports_the_loader_reason_and_keeps_serving(real_cluster: ClusterHandle,
                                                                stack: dict[str, Any]) -> None:
    good = _ready(real_cluster)["status"]["stableRevision"]
    real_cluster.apply(_spec("3", "s3://models/digits/404/model.onnx"), NS)

    def failed() -> dict[str, Any] | None:
        md = _md(real_cluster)
        return md if _cond(md, "ModelLoaded").get("status") == "False" else None

    md = wait_for(failed, 180, interval=1, message="ModelLoaded=False")
    message = _cond(md, "ModelLoaded")["message"]
    assert "model-loader" in message and "404" in message and "s3://models/digits/404/model.onnx" in message
    assert md["status"]["stableRevision"] == good and md["status"]["phase"] == "Degraded"
    events = [e for e in real_cluster.kubectl_json("get", "events", "-n", NS)["items"]
              if e["involvedObject"].get("name") == "digits" and e["reason"] == "LoadFailed"]  # canary rolled back
    assert events and "404" in events[0]["message"]
    x, y = _digits()
    assert (_classify(_url(real_cluster), x[:32]) == y[:32]).mean() > 0.9  # the previous revision serves
    secret_value = stack["store"].secret_key
    assert secret_value not in json.dumps(md) and all(secret_value not in e["message"] for e in events)
    real_cluster.apply(_spec("2", "s3://models/digits/2/model.onnx"), NS)  # back to the good one
    _ready(real_cluster)


def test_scale_gives_two_serving_pods(real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    _ready(real_cluster)
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=2")
    wait_for(lambda: _md(real_cluster)["status"].get("readyReplicas") == 2, 240, interval=1, message="2 ready")

    def endpoints() -> int:
        slices = real_cluster.kubectl_json("get", "endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=digits")
        return sum(1 for s in slices["items"] for ep in s.get("endpoints") or [] if ep["conditions"].get("ready"))

    wait_for(lambda: endpoints() == 2, 60, message="two endpoints behind the Service")


def test_delete_removes_everything(real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    real_cluster.kubectl("delete", MD, "digits", "-n", NS, "--timeout=60s")

    def gone() -> bool:
        left = real_cluster.kubectl("get", "deployments,services,pdb,pods", "-n", NS, "-l",
                                    "modeldeploy.io/name=digits", "-o", "name").stdout.split()
        return not left

    wait_for(gone, 120, interval=1, message="every child removed")
