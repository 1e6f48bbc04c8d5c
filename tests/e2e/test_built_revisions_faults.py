"""Built revisions under faults, on the real node (issue 14, "Faults"): a stored file corrupted in
MinIO, MinIO stopped for 60 s while a new revision builds, and two ModelDeployments of the same key
created at the same moment. Each test ends with the model served from verified bytes (the sha256 of
the file Triton serves, read in the serving pod, equals status's modelSha256), no revision marked
failed, and a status condition that said what happened meanwhile (every version of the
ModelDeployment is recorded by a watch, as `kubectl get --watch` shows it to a user).

No mocks: the chart, the operator pod, the build Jobs, MinIO (its process stopped and started
again), Triton and kubectl exec.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster import binaries, objectstore, process
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.stack import prepare

pytestmark = pytest.mark.e2e

NS = "faults-e2e"
RACE = ("faults-race-a", "faults-race-b")
MD = "modeldeployment"
MODEL_URI = "s3://models/digits/1/model.onnx"
V2_URI = "s3://models/digits/2/model.onnx"
MODEL_FILE = "/models/digits/1/model.onnx"
BUILD_SELECTOR = "app.kubernetes.io/component=model-build"
# A prefix of its own per run: an artifact left by an earlier run on this cluster would be reused.
STORE = f"s3://artifacts/faults-{uuid.uuid4().hex[:8]}"
OUTAGE_S = 60


@pytest.fixture(scope="module")
def faults(real_cluster: ClusterHandle) -> Iterator[dict[str, Any]]:
    """The stack with the chart's artifact store on, and two more restricted namespaces for the race."""
    store = prepare(real_cluster, NS, f"artifacts.store={STORE}", "artifacts.credentialsSecret=s3-creds")
    store.ensure_bucket("artifacts")
    for ns in RACE:
        real_cluster.kubectl("create", "namespace", ns)
        real_cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
                  "stringData": store.secret_data()}
        real_cluster.kubectl("apply", "-n", ns, "-f", "-", input_text=json.dumps(secret))
    yield {"store": store, "sha256": {uri: hashlib.sha256(store.get(uri)).hexdigest() for uri in (MODEL_URI, V2_URI)}}
    assert real_cluster.local is not None
    objectstore.up(real_cluster.local)  # whatever happened, later modules have their store
    for ns in (NS, *RACE):
        real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class Watch:
    """Every version of the ModelDeployments (or pods) of a namespace, as `kubectl get --watch -o
    json` streams them: a condition that held for one pass is seen here even when a poll misses it."""

    def __init__(self, tc: ClusterHandle, kind: str, namespace: str, *selector: str) -> None:
        exe = str(binaries.path_of("kubectl")) if binaries.path_of("kubectl").exists() else "kubectl"
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([exe, f"--kubeconfig={tc.kubeconfig}", "get", kind, "-n", namespace,
                                       *selector, "--watch", "-o", "json"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buf = json.JSONDecoder(), ""
        while chunk := os.read(self._proc.stdout.fileno(), 65536):
            buf += chunk.decode(errors="replace")
            while True:
                buf = buf.lstrip()
                try:
                    obj, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                with self._lock:
                    self.seen.append(obj)

    def objects(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [o for o in self.seen if name is None or o["metadata"]["name"] == name]

    def conditions(self, name: str, ctype: str) -> list[dict[str, Any]]:
        """Each distinct state of condition `ctype` the object went through, in order."""
        out: list[dict[str, Any]] = []
        for obj in self.objects(name):
            cond = _cond(obj, ctype)
            if cond and (not out or (out[-1]["status"], out[-1]["reason"], out[-1]["message"])
                         != (cond["status"], cond["reason"], cond["message"])):
                out.append(cond)
        return out

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


@pytest.fixture
def watches(real_cluster: ClusterHandle) -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for w in started:
        w.stop()


def _spec(sha256: str, replicas: int, uri: str = MODEL_URI, version: str = "1",
          max_batch_size: int = 32) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "digits"},
            "spec": {"model": {"name": "digits", "version": version,
                               "source": {"uri": uri, "credentialsSecret": "s3-creds", "sha256": sha256},
                               "format": "onnx", "maxBatchSize": max_batch_size,
                               "dynamicBatching": {"maxQueueDelayMicroseconds": 500}},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "rollout": {"strategy": "Recreate"},
                     "replicas": replicas}}


def _md(tc: ClusterHandle, ns: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, "digits", "-n", ns)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _pods(tc: ClusterHandle, ns: str) -> list[dict[str, Any]]:
    return [p for p in tc.kubectl_json("get", "pods", "-n", ns, "-l", "modeldeploy.io/name=digits")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _ready(tc: ClusterHandle, ns: str, replicas: int, timeout: float = 300) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        md = _md(tc, ns)
        st = md.get("status", {})
        done = st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]
        pods = _pods(tc, ns)
        ready = len(pods) == replicas and all(_pod_ready(p) for p in pods)
        return md if done and st.get("readyReplicas") == replicas and ready else None
    return wait_for(ok, timeout, interval=1, message=f"digits Ready with {replicas} pods in {ns}")


def _jobs(tc: ClusterHandle, ns: str) -> list[dict[str, Any]]:
    return tc.kubectl_json("get", "jobs", "-n", ns, "-l", f"{BUILD_SELECTOR},modeldeploy.io/name=digits")["items"]


def _events(tc: ClusterHandle, ns: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in tc.kubectl_json("get", "events", "-n", ns)["items"]
            if e["involvedObject"].get("name") == "digits" and e["reason"] == reason]


def _entry(md: dict[str, Any], revision: str | None = None) -> dict[str, Any]:
    revision = revision or md["status"]["stableRevision"]
    (entry,) = [r for r in md["status"]["revisions"] if r["revision"] == revision]
    return entry


def _served_sha256(tc: ClusterHandle, ns: str, pod: str) -> str:
    """sha256 of the model file Triton serves in this pod, read inside its container."""
    script = "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
    return tc.kubectl("exec", "-n", ns, pod, "-c", "triton", "--", "python3", "-c", script, MODEL_FILE).stdout.strip()


def _termination(status: dict[str, Any], which: str = "state") -> dict[str, Any]:
    return (status.get(which) or {}).get("terminated") or {}


def _served_from_verified_bytes(tc: ClusterHandle, ns: str, artifact: dict[str, Any]) -> list[str]:
    """Every serving pod fetched the recorded key, verified it, and serves the bytes status names;
    returns what each pod serves."""
    served = []
    for pod in _pods(tc, ns):
        init = pod["spec"]["initContainers"][0]
        assert init["command"] == ["python", "-m", "modeldeploy.artifact", "fetch", "--key", artifact["key"]]
        (init_status,) = pod["status"]["initContainerStatuses"]
        fetched = json.loads(_termination(init_status)["message"].strip().splitlines()[-1])
        assert fetched["result"] == "fetched" and fetched["key"] == artifact["key"]
        assert fetched["modelSha256"] == artifact["modelSha256"]
        served.append(_served_sha256(tc, ns, pod["metadata"]["name"]))
    assert served and all(s == artifact["modelSha256"] for s in served), (served, artifact["modelSha256"])
    return served


def _never_failed(md: dict[str, Any], watch: Watch) -> None:
    st = md["status"]
    assert "failedRevision" not in st and not any("buildFailure" in r for r in st["revisions"])
    assert all(o.get("status", {}).get("phase") != "Failed" for o in watch.objects("digits"))
    assert all(not o.get("status", {}).get("failedRevision") for o in watch.objects("digits"))


def test_a_file_corrupted_in_the_store_is_refused_by_the_fetch_and_rebuilt(
        real_cluster: ClusterHandle, faults: dict[str, Any], watches: list[Watch]) -> None:
    store = faults["store"]
    real_cluster.apply(_spec(faults["sha256"][MODEL_URI], 1), NS)
    md = _ready(real_cluster, NS, 1)
    revision, first = md["status"]["stableRevision"], _entry(md)["artifact"]
    (job,) = _jobs(real_cluster, NS)
    (old_pod,) = _pods(real_cluster, NS)
    _served_from_verified_bytes(real_cluster, NS, first)

    watches.append(mds := Watch(real_cluster, MD, NS))
    watches.append(pods := Watch(real_cluster, "pods", NS, "-l", "modeldeploy.io/name=digits"))
    # the same size, other bytes: only the sha256 can tell
    stored = f"{STORE}/{first['key']}/model/1/model.onnx"
    good = store.get(stored)
    assert hashlib.sha256(good).hexdigest() == first["modelSha256"]
    store.put(stored, bytes(b ^ 0xFF for b in good[:4096]) + good[4096:])
    assert hashlib.sha256(store.get(stored)).hexdigest() != first["modelSha256"]
    real_cluster.kubectl("scale", f"{MD}/digits", "-n", NS, "--replicas=2")  # a new pod fetches

    md = _ready(real_cluster, NS, 2, timeout=420)
    assert md["status"]["stableRevision"] == revision  # the same revision, its artifact built again
    entry = _entry(md)
    artifact = entry["artifact"]
    assert entry["artifactRebuilds"] == 1
    assert artifact["key"] == first["key"] and artifact["reused"] is False
    assert artifact["recordedAt"] > first["recordedAt"]
    cond = _cond(md, "ArtifactReady")
    assert cond["status"] == "True" and cond["reason"] == "Built"
    _never_failed(md, mds)

    # the new pod's fetch refused the corrupt copy (exit 65), before any byte reached Triton
    new_pod = next(p["metadata"]["name"] for p in _pods(real_cluster, NS) if p["metadata"]["name"] !=
                   old_pod["metadata"]["name"])
    refused = [t for p in pods.objects(new_pod) for s in p["status"].get("initContainerStatuses", [])
               for t in (_termination(s), _termination(s, "lastState")) if t.get("exitCode") == 65]
    assert refused, "no fetch of the new pod exited 65"
    assert json.loads(refused[0]["message"].strip().splitlines()[-1])["exitCode"] == 65
    # what status said meanwhile: ArtifactRebuild, naming the pod and the exit
    said = mds.conditions("digits", "ArtifactReady")
    rebuild = [c for c in said if c["reason"] == "ArtifactRebuild"]
    assert rebuild and rebuild[0]["status"] == "Unknown", said
    assert new_pod in rebuild[0]["message"] and "exited 65" in rebuild[0]["message"], rebuild[0]
    (warning,) = _events(real_cluster, NS, "ArtifactRebuild")
    assert warning["type"] == "Warning" and "exited 65" in warning["message"]

    # a new build Job ran and built (not "reused": the builder found the bad copy and replaced it)
    (rebuilt,) = _jobs(real_cluster, NS)
    assert rebuilt["metadata"]["uid"] != job["metadata"]["uid"] and rebuilt["status"].get("succeeded") == 1
    (build_pod,) = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l",
                                             f"batch.kubernetes.io/controller-uid={rebuilt['metadata']['uid']}")["items"]
    result = json.loads(_termination(build_pod["status"]["containerStatuses"][0])["message"].splitlines()[-1])
    assert result["result"] == "built" and result["key"] == first["key"]
    assert len(_events(real_cluster, NS, "BuildStarted")) == 2
    assert hashlib.sha256(store.get(stored)).hexdigest() == artifact["modelSha256"]

    # the pod that was serving kept serving, and every pod serves the verified bytes
    assert any(p["metadata"]["uid"] == old_pod["metadata"]["uid"] for p in _pods(real_cluster, NS))
    _served_from_verified_bytes(real_cluster, NS, artifact)


def test_the_store_down_for_a_minute_while_a_new_revision_builds(
        real_cluster: ClusterHandle, faults: dict[str, Any], watches: list[Watch]) -> None:
    cfg = real_cluster.local
    assert cfg is not None
    before = _ready(real_cluster, NS, 2)
    old_revision, old = before["status"]["stableRevision"], _entry(before)["artifact"]
    serving = {p["metadata"]["uid"] for p in _pods(real_cluster, NS)}
    watches.append(mds := Watch(real_cluster, MD, NS))

    process.stop(cfg.root / "run", objectstore.NAME)
    stopped = time.monotonic()
    try:
        real_cluster.apply(_spec(faults["sha256"][V2_URI], 2, uri=V2_URI, version="2"), NS)
        while time.monotonic() - stopped < OUTAGE_S:
            md = _md(real_cluster, NS)
            st = md["status"]
            # the old revision serves as it was: the same pods, all Ready, nothing failed
            pods = _pods(real_cluster, NS)
            assert {p["metadata"]["uid"] for p in pods} == serving and all(_pod_ready(p) for p in pods), \
                [(p["metadata"]["name"], _pod_ready(p)) for p in pods]
            assert st["stableRevision"] == old_revision and st.get("readyReplicas") == 2
            assert st.get("phase") != "Failed" and not st.get("failedRevision")
            time.sleep(1)
        said = mds.conditions("digits", "ArtifactReady")
    finally:
        objectstore.up(cfg)
    # during the outage, ArtifactReady said the build was retrying on an unreachable store
    retrying = [c for c in said if c["reason"] == "BuildRetrying"]
    assert retrying and retrying[-1]["status"] == "Unknown", said
    assert "exit code 75" in retrying[-1]["message"], retrying[-1]

    wait_for(lambda: _md(real_cluster, NS)["status"].get("stableRevision") != old_revision, 300, interval=1,
             message="the new revision serves once the store is back")
    md = _ready(real_cluster, NS, 2)
    new = _entry(md)["artifact"]
    assert new["key"] != old["key"] and new["reused"] is False
    assert _cond(md, "ArtifactReady")["reason"] == "Built"
    (job,) = [j for j in _jobs(real_cluster, NS) if j["metadata"]["labels"]["modeldeploy.io/revision"]
              == md["status"]["stableRevision"]]
    assert job["status"].get("succeeded") == 1 and job["status"].get("failed", 0) >= 1  # retried, then built
    _never_failed(md, mds)
    _served_from_verified_bytes(real_cluster, NS, new)


def test_two_model_deployments_racing_for_one_key_build_it_once(
        real_cluster: ClusterHandle, faults: dict[str, Any], watches: list[Watch]) -> None:
    # maxBatchSize 16: a key no earlier test recorded (status would be reused without any race)
    spec = _spec(faults["sha256"][MODEL_URI], 1, max_batch_size=16)
    for ns in RACE:
        watches.append(Watch(real_cluster, MD, ns))
    both = [{**spec, "metadata": {"name": "digits", "namespace": ns}} for ns in RACE]
    real_cluster.apply(both)  # one request after the other, within milliseconds

    mds = {ns: _ready(real_cluster, ns, 1) for ns in RACE}
    jobs = {ns: _jobs(real_cluster, ns) for ns in RACE}
    builders = [ns for ns in RACE if jobs[ns]]
    assert len(builders) == 1 and len(jobs[builders[0]]) == 1, {ns: [j["metadata"]["name"] for j in j_]
                                                                for ns, j_ in jobs.items()}
    (builder,), (waiter,) = builders, [ns for ns in RACE if ns not in builders]
    assert sum(len(_events(real_cluster, ns, "BuildStarted")) for ns in RACE) == 1  # one conversion
    built, reused = _entry(mds[builder])["artifact"], _entry(mds[waiter])["artifact"]
    assert built["reused"] is False and _cond(mds[builder], "ArtifactReady")["reason"] == "Built"
    assert reused["reused"] is True and reused["reusedFrom"].startswith(f"{builder}/digits revision ")
    assert reused["key"] == built["key"] and reused["modelSha256"] == built["modelSha256"]
    assert _cond(mds[waiter], "ArtifactReady")["reason"] == "Reused"

    # what status said meanwhile: the waiter waited for the other's build, and said whose
    said = watches[RACE.index(waiter)].conditions("digits", "ArtifactReady")
    waited = [c for c in said if c["reason"] == "WaitingForBuild"]
    assert waited and waited[0]["status"] == "False", said
    assert f"{builder}/digits" in waited[0]["message"] and jobs[builder][0]["metadata"]["name"] in waited[0]["message"]
    (event,) = _events(real_cluster, waiter, "WaitingForBuild")
    assert event["type"] == "Normal" and f"{builder}/digits" in event["message"]
    for ns in RACE:
        _never_failed(mds[ns], watches[RACE.index(ns)])

    # byte-identical model files, the bytes status names, in both namespaces
    served = {ns: _served_from_verified_bytes(real_cluster, ns, _entry(mds[ns])["artifact"]) for ns in RACE}
    assert served[builder] == served[waiter] == [built["modelSha256"]]
