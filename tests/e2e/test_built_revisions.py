"""Built revisions on the real node (issue 14): with the chart's `artifacts.store` set, a revision is
converted and gated once, by one build Job, into MinIO; every serving pod only fetches and verifies
that artifact, so all of them serve the same bytes, the sha256 status reports. A scale-up builds
nothing, and the same model in another namespace reuses the artifact without a build Job (the
operator computes the key and finds it recorded).

No mocks: the chart, the operator pod, the build Job, MinIO, Triton and kubectl exec, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import ClusterHandle, wait_for
from tests.support.serving_models import linear_onnx
from tests.support.stack import prepare

pytestmark = pytest.mark.e2e

NS = "built-e2e"
NS2 = "built-e2e-other"
MD = "modeldeployment"
MODEL_URI = "s3://models/digits/1/model.onnx"
MODEL_FILE = "/models/digits/1/model.onnx"
BUILD_SELECTOR = "app.kubernetes.io/component=model-build"
# A prefix of its own per run: an artifact left by an earlier run on this cluster would be reused.
STORE = f"s3://artifacts/e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def built(real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """The stack with the chart's artifact store on; the model's sha256 as a user would pin it."""
    store = prepare(real_cluster, NS, f"artifacts.store={STORE}", "artifacts.credentialsSecret=s3-creds")
    store.ensure_bucket("artifacts")
    real_cluster.kubectl("create", "namespace", NS2)
    real_cluster.kubectl("label", "namespace", NS2, "pod-security.kubernetes.io/enforce=restricted")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
              "stringData": store.secret_data()}
    real_cluster.kubectl("apply", "-n", NS2, "-f", "-", input_text=json.dumps(secret))
    yield {"store": store, "sha256": hashlib.sha256(store.get(MODEL_URI)).hexdigest()}
    for ns in (NS, NS2):
        real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _spec(sha256: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
            "spec": {"model": {"name": "digits", "version": "1",
                               "source": {"uri": MODEL_URI, "credentialsSecret": "s3-creds", "sha256": sha256},
                               "format": "onnx", "maxBatchSize": 32,
                               "dynamicBatching": {"maxQueueDelayMicroseconds": 500}},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": replicas}}


def _md(tc: ClusterHandle, ns: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, "digits", "-n", ns)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _ready(tc: ClusterHandle, ns: str, replicas: int, timeout: float = 300) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        md = _md(tc, ns)
        st = md.get("status", {})
        done = st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
        pods = _pods(tc, ns)
        return md if done and st.get("readyReplicas") == replicas and len(pods) == replicas else None
    return wait_for(ok, timeout, interval=1, message=f"digits Ready with {replicas} pods in {ns}")


def _pods(tc: ClusterHandle, ns: str) -> list[dict[str, Any]]:
    return [p for p in tc.kubectl_json("get", "pods", "-n", ns, "-l", "modeldeploy.io/name=digits")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _jobs(tc: ClusterHandle, ns: str, name: str = "digits") -> list[dict[str, Any]]:
    return tc.kubectl_json("get", "jobs", "-n", ns, "-l", f"{BUILD_SELECTOR},modeldeploy.io/name={name}")["items"]


def _events(tc: ClusterHandle, ns: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in tc.kubectl_json("get", "events", "-n", ns)["items"]
            if e["involvedObject"].get("name") == "digits" and e["reason"] == reason]


def _artifact(md: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [r for r in md["status"]["revisions"] if r["revision"] == md["status"]["stableRevision"]]
    return entry["artifact"]


def _served_sha256(tc: ClusterHandle, ns: str, pod: str) -> str:
    """sha256 of the model file Triton serves in this pod, read inside its container."""
    script = "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
    return tc.kubectl("exec", "-n", ns, pod, "-c", "triton", "--", "python3", "-c", script, MODEL_FILE).stdout.strip()


def _fetch_result(pod: dict[str, Any]) -> dict[str, Any]:
    """The init container's JSON result (its termination message): what it did before Triton started."""
    (init,) = pod["status"]["initContainerStatuses"]
    return json.loads(init["state"]["terminated"]["message"].strip().splitlines()[-1])


def _every_pod_serves_the_artifact(tc: ClusterHandle, ns: str, artifact: dict[str, Any]) -> None:
    for pod in _pods(tc, ns):
        init = pod["spec"]["initContainers"][0]
        assert init["command"] == ["python", "-m", "modeldeploy.artifact", "fetch", "--key", artifact["key"]]
        fetched = _fetch_result(pod)
        assert fetched["result"] == "fetched" and fetched["key"] == artifact["key"]
        assert fetched["modelSha256"] == artifact["modelSha256"]
        assert _served_sha256(tc, ns, pod["metadata"]["name"]) == artifact["modelSha256"]


def test_three_replicas_get_one_build_and_serve_its_bytes(real_cluster: ClusterHandle, built: dict[str, Any]) -> None:
    real_cluster.apply(_spec(built["sha256"], 3), NS)
    md = _ready(real_cluster, NS, 3)
    (job,) = _jobs(real_cluster, NS)
    assert job["metadata"]["name"] == f"digits-build-{md['status']['stableRevision']}"
    assert job["status"].get("succeeded") == 1
    artifact = _artifact(md)
    assert artifact["key"].startswith("digits-") and len(artifact["modelSha256"]) == 64
    assert artifact["reused"] is False and artifact["quantized"] is False and artifact["buildSeconds"] > 0
    assert _cond(md, "ArtifactReady")["status"] == "True" and _cond(md, "ArtifactReady")["reason"] == "Built"
    assert artifact["key"] in _cond(md, "ArtifactReady")["message"]
    # what the build Job said, from its pod's termination message
    (build_pod,) = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l",
                                             f"batch.kubernetes.io/job-name={job['metadata']['name']}")["items"]
    said = json.loads(build_pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"].splitlines()[-1])
    assert said["result"] == "built" and said["key"] == artifact["key"] and said["store"].startswith(STORE)
    _every_pod_serves_the_artifact(real_cluster, NS, artifact)
    assert len(_events(real_cluster, NS, "BuildStarted")) == 1


def test_scale_up_from_one_to_three_builds_nothing(real_cluster: ClusterHandle, built: dict[str, Any]) -> None:
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=1")
    _ready(real_cluster, NS, 1)
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=3")
    md = _ready(real_cluster, NS, 3)
    assert len(_jobs(real_cluster, NS)) == 1
    assert len(_events(real_cluster, NS, "BuildStarted")) == 1
    _every_pod_serves_the_artifact(real_cluster, NS, _artifact(md))


def test_the_same_model_in_another_namespace_reuses_the_artifact(real_cluster: ClusterHandle,
                                                                 built: dict[str, Any]) -> None:
    first = _artifact(_md(real_cluster, NS))
    real_cluster.apply(_spec(built["sha256"], 1), NS2)
    md = _ready(real_cluster, NS2, 1)
    artifact = _artifact(md)
    assert artifact["key"] == first["key"] and artifact["modelSha256"] == first["modelSha256"]
    assert artifact["reused"] is True and artifact["reusedFrom"].startswith(f"{NS}/digits revision ")
    assert _cond(md, "ArtifactReady")["status"] == "True" and _cond(md, "ArtifactReady")["reason"] == "Reused"
    assert _jobs(real_cluster, NS2) == []  # the operator computed the key and found NS's record: no Job
    assert any(f"{NS}/digits" in e["message"] for e in _events(real_cluster, NS2, "Reused"))
    _every_pod_serves_the_artifact(real_cluster, NS2, artifact)


def test_a_build_that_cannot_succeed_fails_its_revision_once(real_cluster: ClusterHandle,
                                                             built: dict[str, Any]) -> None:
    wrong = "0" * 64
    spec = _spec(wrong, 2)
    spec["metadata"]["name"] = "pinned-wrong"
    real_cluster.apply(spec, NS2)

    def failed() -> dict[str, Any] | None:
        md = real_cluster.kubectl_json("get", MD, "pinned-wrong", "-n", NS2)
        return md if md.get("status", {}).get("phase") == "Failed" else None

    md = wait_for(failed, 180, interval=1, message="pinned-wrong Failed")
    st = md["status"]
    cond = _cond(md, "ArtifactReady")
    assert cond["status"] == "False" and cond["reason"] == "BuildFailed"
    assert "sha256 mismatch" in cond["message"] and "sha256 mismatch" in st["message"]
    assert st["failedRevision"] == st["stableRevision"]
    (entry,) = st["revisions"]
    assert "sha256 mismatch" in entry["buildFailure"] and "artifact" not in entry
    (job,) = _jobs(real_cluster, NS2, "pinned-wrong")
    assert job["status"].get("failed") == 1  # not retried: a retry would fail the same way
    deployments = real_cluster.kubectl_json("get", "deployments", "-n", NS2, "-l", "modeldeploy.io/name=pinned-wrong")
    assert deployments["items"] == []  # nothing to serve, no pod ever converted anything
    time.sleep(10)  # passes go on (resync): the failure is recorded once, no new Job, one Event
    assert len(_jobs(real_cluster, NS2, "pinned-wrong")) == 1
    events = [e for e in real_cluster.kubectl_json("get", "events", "-n", NS2)["items"]
              if e["involvedObject"].get("name") == "pinned-wrong" and e["reason"] == "BuildFailed"]
    assert len(events) == 1 and events[0]["type"] == "Warning"


def test_a_new_version_builds_while_the_old_one_serves(real_cluster: ClusterHandle, built: dict[str, Any]) -> None:
    before = _md(real_cluster, NS)
    old_revision, old = before["status"]["stableRevision"], _artifact(before)
    v2_uri = MODEL_URI.replace("/1/", "/2/")
    spec = _spec(hashlib.sha256(built["store"].get(v2_uri)).hexdigest(), 3)
    spec["spec"]["model"].update(version="2", source={**spec["spec"]["model"]["source"], "uri": v2_uri})
    spec["spec"]["rollout"] = {"strategy": "Recreate"}
    real_cluster.apply(spec, NS)

    def building() -> dict[str, Any] | None:
        md = _md(real_cluster, NS)
        return md if _cond(md, "ArtifactReady").get("reason") == "Building" else None

    md = wait_for(building, 60, interval=0.2, message="the new revision building")
    # meanwhile the old revision serves as it was: all its pods, no new Deployment yet
    assert md["status"]["stableRevision"] == old_revision and md["status"]["readyReplicas"] == 3
    deployments = real_cluster.kubectl_json("get", "deployments", "-n", NS, "-l", "modeldeploy.io/name=digits")
    assert [d["metadata"]["name"] for d in deployments["items"]] == [f"digits-{old_revision}"]

    wait_for(lambda: _md(real_cluster, NS)["status"].get("stableRevision") != old_revision, 300, interval=1,
             message="the new revision serves")
    md = _ready(real_cluster, NS, 3)
    new = _artifact(md)
    # a new key (the version is in config.pbtxt); the hack publishes the same trained bytes as version 2
    assert new["key"] != old["key"] and new["reused"] is False
    assert len(_jobs(real_cluster, NS)) == 2  # one per revision
    _every_pod_serves_the_artifact(real_cluster, NS, new)


def test_a_second_model_deployment_of_the_same_model_never_creates_a_build_job(
        real_cluster: ClusterHandle, built: dict[str, Any]) -> None:
    """Issue 14 (a): the same model (same spec.model.name, settings and sha256) under another name in
    the second namespace is Ready on the recorded artifact, and no build Job exists for it at any
    moment (checked on every poll, not only at the end)."""
    name = "digits-copy"
    spec = _spec(built["sha256"], 1)
    spec["metadata"]["name"] = name
    real_cluster.apply(spec, NS2)
    selector = f"{BUILD_SELECTOR},modeldeploy.io/name={name}"

    def ready() -> dict[str, Any] | None:
        jobs = real_cluster.kubectl_json("get", "jobs", "-n", NS2, "-l", selector)["items"]
        assert jobs == [], f"a build Job was created for {name}: {[j['metadata']['name'] for j in jobs]}"
        md = real_cluster.kubectl_json("get", MD, name, "-n", NS2)
        st = md.get("status", {})
        done = st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
        return md if done and st.get("readyReplicas") == 1 else None

    md = wait_for(ready, 300, interval=1, message=f"{name} Ready in {NS2} without a build Job")
    artifact = _artifact(md)
    assert artifact["reused"] is True and artifact["key"] == _artifact(_md(real_cluster, NS2))["key"]
    assert _cond(md, "ArtifactReady")["reason"] == "Reused"
    time.sleep(5)  # later passes (resync) start nothing either
    assert real_cluster.kubectl_json("get", "jobs", "-n", NS2, "-l", selector)["items"] == []
    pods = real_cluster.kubectl_json("get", "pods", "-n", NS2, "-l", f"modeldeploy.io/name={name}")["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    fetched = _fetch_result(pod)
    assert fetched["result"] == "fetched" and fetched["key"] == artifact["key"]
    assert _served_sha256(real_cluster, NS2, pod["metadata"]["name"]) == artifact["modelSha256"]


def test_an_int8_build_times_its_gates_through_the_serving_triton(real_cluster: ClusterHandle,
                                                                 built: dict[str, Any]) -> None:
    """Issue 14 item 6: an int8 revision's build Job runs the serving image's Triton beside the builder
    (a native sidecar holding the serving container's GPU), both gates run through it, the Job
    completes when the builder exits, and status says the numbers came from Triton."""
    name, uri = "wide", "s3://models/wide/1/model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        linear_onnx(Path(tmp) / "wide.onnx", features=2048, classes=1024)  # int8 pays off through Triton
        model = (Path(tmp) / "wide.onnx").read_bytes()
    built["store"].put(uri, model)
    spec = _spec(hashlib.sha256(model).hexdigest(), 1)
    spec["metadata"]["name"] = name
    spec["spec"]["model"].update(name=name, source={**spec["spec"]["model"]["source"], "uri": uri},
                                 optimization={"quantize": "int8", "minAgreement": 0.9})
    real_cluster.apply(spec, NS)

    def ready() -> dict[str, Any] | None:
        md = real_cluster.kubectl_json("get", MD, name, "-n", NS)
        st = md.get("status", {})
        assert st.get("phase") != "Failed", st.get("message")
        return md if st.get("phase") == "Ready" and st.get("readyReplicas") == 1 else None

    md = wait_for(ready, 600, interval=2, message=f"{name} Ready")
    artifact = _artifact(md)
    assert artifact["quantized"] is True
    gates = artifact["gates"]
    assert gates["timedBy"] == "triton" and gates["speedup"] > 1.0 and gates["agreement"] >= 0.9, gates
    (job,) = _jobs(real_cluster, NS, name)
    assert job["status"].get("succeeded") == 1
    (pod,) = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l",
                                       f"batch.kubernetes.io/job-name={job['metadata']['name']}")["items"]
    assert pod["status"]["phase"] == "Succeeded"
    (gate,) = pod["spec"]["initContainers"]
    serving_pod = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l", f"modeldeploy.io/name={name}")["items"][0]
    triton = next(c for c in serving_pod["spec"]["containers"] if c["name"] == "triton")
    assert gate["name"] == "gate-triton" and gate["restartPolicy"] == "Always" and gate["image"] == triton["image"]
    assert gate["resources"]["limits"]["nvidia.com/gpu"] == triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (build,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(build.get("resources", {}))
    said = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"].splitlines()[-1])
    assert said["result"] == "built" and said["gates"]["timedBy"] == "triton"
    # the sidecar ran and was stopped after the builder; Triton loaded and ran both gate models
    (sidecar,) = pod["status"]["initContainerStatuses"]
    assert "terminated" in sidecar["state"], sidecar
    log = real_cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"], "-c", "gate-triton").stdout
    for gate_model in ("modeldeploy-gate-fp32", "modeldeploy-gate-int8"):
        assert f"successfully loaded '{gate_model}'" in log, log[-3000:]
    builder_log = real_cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"], "-c", "build").stdout
    print(f"\n{name}: " + next((line for line in builder_log.splitlines() if "int8 check on" in line), "?"))
