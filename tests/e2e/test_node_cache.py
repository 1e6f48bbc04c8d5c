"""Serving pods fetch through their node's cache agent, on the real node (issue 14, item 4).

The chart with `artifacts.store` and `artifactCache` on: the operator builds a revision once into
MinIO, and the fetch init container of every serving pod asks the cache agent on its node first.
The first pod on the node costs the store one download (the agent's fill), the next ones are served
from the node's copy with nothing read from the store, and every pod still verifies each byte
against the manifest (its model file has the sha256 status reports). The agent killed during a
scale-up: pods start anyway (the store), and the agent comes back with its copy (a hostPath).

The local cluster has no cluster DNS, so the agent's Service gets a fixed ClusterIP
(`artifactCache.clusterIP`) and pods use that address. No mocks: the chart, the operator pod, the
build Job, the agent DaemonSet, MinIO, Triton and kubectl exec, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import objectstore
from tests.support import operator as op
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.stack import CHART_VALUES, prepare

pytestmark = pytest.mark.e2e

NS = "cache-e2e"
MD = "modeldeployment"
MODEL_URI = "s3://models/digits/1/model.onnx"
MODEL_FILE = "/models/digits/1/model.onnx"
STORE = f"s3://artifacts/cache-e2e-{uuid.uuid4().hex[:8]}"  # a prefix per run: nothing reused from before
AGENT_SECRET = "artifact-store"
AGENT_SELECTOR = "app.kubernetes.io/name=modeldeploy-cache-agent"
# A fixed address in the e2e cluster's Service range (10.96.0.0/16; its low band is for static IPs).
AGENT_IP = "10.96.0.90"


@pytest.fixture(scope="module")
def cached(real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """The stack with built revisions and the node cache agent on; the agent's store Secret first."""
    assert real_cluster.local is not None
    store = objectstore.up(real_cluster.local)
    host_dir = Path(tempfile.mkdtemp(prefix="md-cache-agent-"))  # the node is this machine: a hostPath of its own
    real_cluster.kubectl("create", "namespace", op.SYSTEM_NAMESPACE, check=False)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": AGENT_SECRET},
              "stringData": store.secret_data()}
    real_cluster.kubectl("apply", "-n", op.SYSTEM_NAMESPACE, "-f", "-", input_text=json.dumps(secret))
    prepare(real_cluster, NS, f"artifacts.store={STORE}", "artifacts.credentialsSecret=s3-creds",
            "artifactCache.enabled=true", f"artifactCache.store={STORE}",
            f"artifactCache.storeCredentialsSecret={AGENT_SECRET}", f"artifactCache.clusterIP={AGENT_IP}",
            f"artifactCache.hostPath={host_dir}")
    store.ensure_bucket("artifacts")
    _agent(real_cluster)
    yield {"store": store, "sha256": hashlib.sha256(store.get(MODEL_URI)).hexdigest(), "dir": host_dir}
    real_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    # the chart without the agent again, for the modules after this one; then its directory
    op.install_chart(real_cluster, *CHART_VALUES)
    real_cluster.kubectl("delete", "secret", AGENT_SECRET, "-n", op.SYSTEM_NAMESPACE, check=False)
    wait_for(lambda: not _agent_pods(real_cluster), 60, interval=1, message="the agent gone")
    shutil.rmtree(host_dir, ignore_errors=True)


def _spec(sha256: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
            "spec": {"model": {"name": "digits", "version": "1",
                               "source": {"uri": MODEL_URI, "credentialsSecret": "s3-creds", "sha256": sha256},
                               "format": "onnx", "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                               "limits": {"memory": "2Gi"}}},
                     "replicas": replicas}}


def _agent_pods(tc: ClusterHandle) -> list[dict[str, Any]]:
    return [p for p in tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE, "-l", AGENT_SELECTOR)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _agent(tc: ClusterHandle, timeout: float = 120) -> dict[str, Any]:
    """The one agent pod (one node), once Ready."""
    def ready() -> dict[str, Any] | None:
        pods = _agent_pods(tc)
        ok = [p for p in pods if _pod_ready(p)]
        return ok[0] if len(pods) == 1 and ok else None
    return wait_for(ready, timeout, interval=1, message="the cache agent Ready")


def _metrics(tc: ClusterHandle) -> dict[str, float]:
    """The agent's /metrics, read inside its pod: each family summed over its labels."""
    pod = _agent(tc)["metadata"]["name"]
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8090/metrics').read().decode())"
    text = tc.kubectl("exec", "-n", op.SYSTEM_NAMESPACE, pod, "-c", "agent", "--", "python3", "-c", script).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modeldeploy_cache_"):
            name, value = line.rsplit(" ", 1)
            key = name if name.startswith("modeldeploy_cache_fills_total") else name.split("{")[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _filled(m: dict[str, float]) -> float:
    return m.get('modeldeploy_cache_fills_total{result="filled"}', 0.0)


def _md(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, "digits", "-n", NS)


def _pods(tc: ClusterHandle) -> list[dict[str, Any]]:
    return [p for p in tc.kubectl_json("get", "pods", "-n", NS, "-l", "modeldeploy.io/name=digits")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _ready(tc: ClusterHandle, replicas: int, timeout: float = 300) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        md = _md(tc)
        st = md.get("status", {})
        done = st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
        pods = _pods(tc)
        every = all(_pod_ready(p) for p in pods)
        return md if done and st.get("readyReplicas") == replicas and len(pods) == replicas and every else None
    return wait_for(ok, timeout, interval=1, message=f"digits Ready with {replicas} pods")


def _artifact(md: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [r for r in md["status"]["revisions"] if r["revision"] == md["status"]["stableRevision"]]
    return entry["artifact"]


def _fetch_result(pod: dict[str, Any]) -> dict[str, Any]:
    (init,) = pod["status"]["initContainerStatuses"]
    return json.loads(init["state"]["terminated"]["message"].strip().splitlines()[-1])


def _served_sha256(tc: ClusterHandle, pod: str) -> str:
    script = "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
    return tc.kubectl("exec", "-n", NS, pod, "-c", "triton", "--", "python3", "-c", script, MODEL_FILE).stdout.strip()


def _fetches(tc: ClusterHandle, artifact: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each pod's fetch result, after checking that the pod serves the artifact's bytes."""
    out = {}
    for pod in _pods(tc):
        name = pod["metadata"]["name"]
        init = pod["spec"]["initContainers"][0]
        assert {"name": "MD_ARTIFACT_CACHE_URL", "value": f"http://{AGENT_IP}:8090"} in init["env"]
        fetched = _fetch_result(pod)
        assert fetched["result"] == "fetched" and fetched["key"] == artifact["key"]
        assert fetched["modelSha256"] == artifact["modelSha256"]
        assert _served_sha256(tc, name) == artifact["modelSha256"]
        out[name] = fetched
    return out


def test_scale_up_pods_are_served_by_the_node_cache(real_cluster: ClusterHandle, cached: dict[str, Any]) -> None:
    before = _metrics(real_cluster)
    assert before.get("modeldeploy_cache_filled_bytes_total", 0) == 0
    real_cluster.apply(_spec(cached["sha256"], 1), NS)
    md = _ready(real_cluster, 1)
    artifact = _artifact(md)
    (first,) = _fetches(real_cluster, artifact).values()
    after_first = _metrics(real_cluster)
    # the first pod on the node: one fill from the store, which the agent then served to it
    assert after_first["modeldeploy_cache_misses_total"] >= 1 and _filled(after_first) == 1
    assert after_first["modeldeploy_cache_filled_bytes_total"] >= first["bytes"] > 0
    assert first["fromCache"] == first["files"]

    old = {p["metadata"]["name"] for p in _pods(real_cluster)}
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=3")
    md = _ready(real_cluster, 3)
    fetches = _fetches(real_cluster, _artifact(md))
    new = {name: f for name, f in fetches.items() if name not in old}
    assert len(new) == 2
    after = _metrics(real_cluster)
    # the 2nd and 3rd pods: hits, every file from the node's copy, nothing more read from the store
    assert after["modeldeploy_cache_hits_total"] >= after_first["modeldeploy_cache_hits_total"] + 2
    assert after["modeldeploy_cache_filled_bytes_total"] == after_first["modeldeploy_cache_filled_bytes_total"]
    assert _filled(after) == 1
    assert all(f["fromCache"] == f["files"] and f["retried"] == [] for f in new.values()), new
    assert (cached["dir"] / artifact["key"] / "manifest.json").is_file()  # the copy is on the node's disk


def test_the_agent_killed_during_a_scale_up(real_cluster: ClusterHandle, cached: dict[str, Any]) -> None:
    artifact = _artifact(_md(real_cluster))
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=1")
    _ready(real_cluster, 1)
    old = {p["metadata"]["name"] for p in _pods(real_cluster)}
    agent = _agent(real_cluster)
    real_cluster.kubectl("delete", "pod", "-n", op.SYSTEM_NAMESPACE, agent["metadata"]["name"],
                         "--grace-period=0", "--force", "--wait=false")
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=3")
    md = _ready(real_cluster, 3)
    # every pod started on verified bytes, whether the agent answered it or not (then the store did)
    fetches = _fetches(real_cluster, _artifact(md))
    new = {name: f for name, f in fetches.items() if name not in old}
    assert len(new) == 2
    print("fetches during the agent's restart:",
          {n: (f["fromCache"], f["files"], f["seconds"]) for n, f in sorted(new.items())})
    assert _artifact(md)["key"] == artifact["key"]

    # the agent is back (a new pod) with its copy: found at start, served without a trip to the store
    back = _agent(real_cluster)
    assert back["metadata"]["uid"] != agent["metadata"]["uid"]
    restarted = _metrics(real_cluster)
    assert restarted["modeldeploy_cache_artifacts"] >= 1
    assert (cached["dir"] / artifact["key"] / "manifest.json").is_file()
    victim = sorted(new)[0]
    real_cluster.kubectl("delete", "pod", "-n", NS, victim, "--wait=false")
    wait_for(lambda: victim not in {p["metadata"]["name"] for p in _pods(real_cluster)} or None, 60, interval=1,
             message="the deleted pod gone")
    md = _ready(real_cluster, 3)
    replacement = {n: f for n, f in _fetches(real_cluster, _artifact(md)).items() if n not in fetches}
    (f,) = replacement.values()
    assert f["fromCache"] == f["files"]
    m = _metrics(real_cluster)
    assert m["modeldeploy_cache_hits_total"] >= restarted["modeldeploy_cache_hits_total"] + 1
    assert m.get("modeldeploy_cache_filled_bytes_total", 0) == 0 and _filled(m) == 0
