"""Built revisions with a PersistentVolumeClaim as the artifact store (issue 14, item 2), on the real
node: the chart's `artifacts.store: pvc://CLAIM` names a claim in the model's namespace; the build
Job mounts it read-write and writes the verified artifact there in the documented layout; serving
pods mount it read-only and only fetch and verify. No S3 credentials are involved for the store.

The claim is bound to a hostPath PersistentVolume (the node is this machine), so the test reads the
store's files as a user inspecting the volume would. No mocks: the chart, the operator pod, the PV
controller, the build Job, Triton and kubectl exec.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_built_revisions import (
    _artifact,
    _every_pod_serves_the_artifact,
    _jobs,
    _pods,
    _ready,
)
from tests.support.cluster import ClusterHandle
from tests.support.stack import prepare

pytestmark = pytest.mark.e2e

NS = "built-pvc-e2e"
CLAIM = "model-artifacts"
MODEL_URI = "s3://models/digits/1/model.onnx"


@pytest.fixture(scope="module")
def pvc_store(real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """The stack with `artifacts.store=pvc://model-artifacts`, and that claim bound to a hostPath volume."""
    store = prepare(real_cluster, NS, f"artifacts.store=pvc://{CLAIM}")
    host_dir = Path(tempfile.mkdtemp(prefix="md-pvc-store-"))
    os.chmod(host_dir, 0o777)  # the pods run as uid 1000; a hostPath volume gets no fsGroup ownership
    pv_name = f"{NS}-{CLAIM}"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain",
                   "hostPath": {"path": str(host_dir), "type": "Directory"},
                   "claimRef": {"namespace": NS, "name": CLAIM}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}}}}
    real_cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pv))
    real_cluster.kubectl("apply", "-n", NS, "-f", "-", input_text=json.dumps(pvc))
    yield {"dir": host_dir, "sha256": hashlib.sha256(store.get(MODEL_URI)).hexdigest()}
    real_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    real_cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
    shutil.rmtree(host_dir, ignore_errors=True)


def _spec(sha256: str) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
            "spec": {"model": {"name": "digits", "version": "1",
                               "source": {"uri": MODEL_URI, "credentialsSecret": "s3-creds", "sha256": sha256},
                               "format": "onnx", "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": 2}}


def test_a_claim_holds_the_built_artifact_and_every_pod_serves_it_read_only(
        real_cluster: ClusterHandle, pvc_store: dict[str, Any]) -> None:
    real_cluster.apply(_spec(pvc_store["sha256"]), NS)
    md = _ready(real_cluster, NS, 2)
    artifact = _artifact(md)
    assert artifact["modelSha256"] == pvc_store["sha256"] and not artifact.get("reused")
    assert len(_jobs(real_cluster, NS)) == 1  # one build for two pods

    # The store as a user inspecting the volume sees it: <key>/manifest.json and the model's files.
    root = pvc_store["dir"] / artifact["key"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["key"] == artifact["key"] and manifest["modelFile"] == "1/model.onnx"
    for rel, entry in manifest["files"].items():  # every file as the manifest says
        assert hashlib.sha256((root / "model" / rel).read_bytes()).hexdigest() == entry["sha256"], rel
    assert manifest["files"]["1/model.onnx"]["sha256"] == artifact["modelSha256"]

    _every_pod_serves_the_artifact(real_cluster, NS, artifact)
    for pod in _pods(real_cluster, NS):
        spec = pod["spec"]
        (init,) = spec["initContainers"]
        env = {e["name"]: e.get("value") for e in init["env"]}
        assert env["MD_ARTIFACT_STORE"] == "file:///artifact-store"
        assert not any(name.startswith("MD_STORE_AWS_") for name in env)  # a claim has no credentials
        assert {"name": "artifact-store", "mountPath": "/artifact-store", "readOnly": True} in init["volumeMounts"]
        assert {"name": "artifact-store",
                "persistentVolumeClaim": {"claimName": CLAIM, "readOnly": True}} in spec["volumes"]
        (triton,) = spec["containers"]
        assert "artifact-store" not in {m["name"] for m in triton["volumeMounts"]}
