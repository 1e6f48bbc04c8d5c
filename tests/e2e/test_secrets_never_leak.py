"""Secrets never leak (issue 15, item 5): planted credentials and presigned query strings, driven
through the paths a load takes on the real node, appear nowhere a user without the Secret reads.

Planted (distinctive, random per run):
- Secret `leak-sts`: temporary credentials issued by the store's own STS (MinIO AssumeRole with a
  read-only session policy): access key, secret key and session token, as a platform hands them
  out. The loader must send the session token or the store refuses them, so a load with them
  proves the token was in play.
- Secret `leak-planted`: `LEAKCANARY…` access key, secret key and session token against the real
  store (refused: 403); `leak-planted-down`: the same keys, the store's endpoint on a closed port.
- http(s) sources and a dataset as presigned URLs (SigV4 query signing with the STS credentials:
  X-Amz-Credential, X-Amz-Security-Token, X-Amz-Signature) plus a `token=LEAKCANARY…` parameter
  signed along; one URL whose X-Amz-Signature is itself `LEAKCANARY…` (refused: 403).
- The store's root keys (in the namespace's `s3-creds`, used by none of these paths).

Driven, at once where they can be: a model that loads over s3:// with the STS Secret and then, as
a canary, over a presigned http URL; that canary's validation Job with the planted Secret (403 on
the dataset, rolled back); a third revision whose Job fetches a presigned dataset and passes; a
planted wrong key (403), the planted keys against a closed port (network error, retried by the
kubelet), a wrong sha256 of a presigned http source, and a presigned URL with a planted signature.
Each path is asserted to have failed or passed for its own reason first, so the scan cannot pass
because a path never ran.

Searched, for each value (as is, URL-encoded and base64): every ModelDeployment's status, every
Event of the namespace and the operator's namespace, the operator's logs (every container of every
pod there, --previous after a restart), the log of every container run in the namespace (loader,
Triton, validation Job; --previous for restarted ones, read while the pods ran, since a
rolled-back canary's pod is deleted), every pod's status with its termination messages, and the
Jobs' and Deployments' status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from localcluster import objectstore
from modeldeploy.loader import sigv4
from tests.conftest import ARTIFACTS
from tests.support import operator as op
from tests.support.cluster import ClusterHandle, wait_for

pytestmark = pytest.mark.e2e

NS = "secrets-leak-e2e"
MD = "modeldeployment"
BUCKET = "models"
V1, V2, DATASET = "digits/1/model.onnx", "digits/2/model.onnx", "digits/validation.npz"
CLOSED_ENDPOINT = "http://127.0.0.1:1"  # nothing listens on port 1 in the pod's network namespace
GOOD, BAD_KEY, STORE_DOWN, BAD_SHA, BAD_SIGNATURE = "good", "bad-key", "store-down", "bad-sha", "bad-signature"
STS_SECRET, PLANTED_SECRET, DOWN_SECRET = "leak-sts", "leak-planted", "leak-planted-down"
POLL_S = 2.0  # how often container runs are read while the paths run
RUNNING_REFRESH_S = 10.0  # a running container's log is read again at most this often
LOADER = "model-loader"
GONE = "unable to retrieve container logs for "  # what `kubectl logs` prints (exit 0) once the kubelet dropped a run


def _canary(what: str) -> str:
    return f"LEAKCANARY{what}{uuid.uuid4().hex}"


# ---------------------------------------------------------------- the store: STS and presigned URLs


def _assume_role(store: objectstore.Store) -> sigv4.Credentials:
    """Temporary credentials from the store's STS (AssumeRole, signed with the root keys), limited
    by a session policy to reading the models bucket."""
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}
    body = urllib.parse.urlencode({"Action": "AssumeRole", "Version": "2011-06-15", "DurationSeconds": "3600",
                                   "Policy": json.dumps(policy, separators=(",", ":"))}).encode()
    host = store.endpoint.removeprefix("http://")
    headers = sigv4.sign("POST", host, "/", {}, {"content-type": "application/x-www-form-urlencoded"},
                         sigv4.Credentials(store.access_key, store.secret_key), objectstore.REGION,
                         datetime.now(UTC), service="sts", payload_sha256=hashlib.sha256(body).hexdigest())
    headers.pop("host")
    request = urllib.request.Request(store.endpoint + "/", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        root = ET.fromstring(resp.read())
    found = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
    creds = sigv4.Credentials(found.get("AccessKeyId", ""), found.get("SecretAccessKey", ""),
                              found.get("SessionToken", ""))
    assert creds.access_key and creds.secret_key and creds.session_token, f"no credentials from STS: {found}"
    return creds


def _presign(store: objectstore.Store, key: str, creds: sigv4.Credentials, extra: dict[str, str],
             signature: str | None = None) -> tuple[str, str]:
    """(URL, its X-Amz-Signature): a presigned GET of s3://models/KEY as `aws s3 presign` makes it
    (SigV4 query signing, session token included), `extra` parameters signed along; `signature`
    replaces the real one."""
    host = store.endpoint.removeprefix("http://")
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{objectstore.REGION}/s3/aws4_request"
    query = {"X-Amz-Algorithm": sigv4.ALGORITHM, "X-Amz-Credential": f"{creds.access_key}/{scope}",
             "X-Amz-Date": amz_date, "X-Amz-Expires": "3600", "X-Amz-SignedHeaders": "host",
             "X-Amz-Security-Token": creds.session_token, **extra}
    path = f"/{BUCKET}/{sigv4.uri_encode(key, keep_slash=True)}"
    canonical = "\n".join(["GET", path, sigv4.canonical_query(query), f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join([sigv4.ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key_ = sigv4.signing_key(creds.secret_key, amz_date[:8], objectstore.REGION, "s3")
    sig = signature or hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{store.endpoint}{path}?{sigv4.canonical_query({**query, 'X-Amz-Signature': sig})}", sig


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), b""


@dataclass(frozen=True)
class Planted:
    values: dict[str, str]  # what it is -> the secret value
    source_url: str  # v2's source: presigned, loads
    source_sha256: str
    bad_sha_url: str  # presigned, loads, but the spec names another sha256
    bad_signature_url: str  # X-Amz-Signature planted: 403
    v1_sha256: str
    dataset_url: str  # presigned validation data for v3's Job


def _plant(tc: ClusterHandle, store: objectstore.Store) -> Planted:
    sts = _assume_role(store)
    ak, sk, token = _canary("AK"), _canary("SK"), _canary("ST")
    q_source, q_sha, q_bad, q_dataset = _canary("Q"), _canary("Q"), _canary("Q"), _canary("Q")
    source_url, source_sig = _presign(store, V2, sts, {"token": q_source})
    bad_sha_url, bad_sha_sig = _presign(store, V1, sts, {"token": q_sha})
    bad_signature_url, bad_sig = _presign(store, V1, sts, {"token": q_bad}, signature=_canary("SIG"))
    dataset_url, dataset_sig = _presign(store, DATASET, sts, {"token": q_dataset})
    # The URLs work (or not) from the host as they will from the pods.
    (code, v2), (code1, v1), (code_bad, _), (code_data, _) = (_get(u) for u in (
        source_url, bad_sha_url, bad_signature_url, dataset_url))
    assert (code, code1, code_bad, code_data) == (200, 200, 403, 200), "presigned URLs as planned"
    assert max(len(u) for u in (source_url, bad_sha_url, bad_signature_url, dataset_url)) <= 2048  # the CRD's limit
    endpoint = {"AWS_ENDPOINT_URL": store.endpoint, "AWS_REGION": objectstore.REGION}
    secrets = {
        STS_SECRET: {**endpoint, "AWS_ACCESS_KEY_ID": sts.access_key, "AWS_SECRET_ACCESS_KEY": sts.secret_key,
                     "AWS_SESSION_TOKEN": sts.session_token},
        PLANTED_SECRET: {**endpoint, "AWS_ACCESS_KEY_ID": ak, "AWS_SECRET_ACCESS_KEY": sk, "AWS_SESSION_TOKEN": token},
        DOWN_SECRET: {"AWS_ENDPOINT_URL": CLOSED_ENDPOINT, "AWS_REGION": objectstore.REGION,
                      "AWS_ACCESS_KEY_ID": ak, "AWS_SECRET_ACCESS_KEY": sk, "AWS_SESSION_TOKEN": token},
    }
    for name, data in secrets.items():
        # `create`, not client-side `apply`: no last-applied annotation holding the values.
        tc.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found")
        tc.kubectl("create", "-n", NS, "-f", "-", input_text=json.dumps(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}))
    values = {
        "planted AWS_ACCESS_KEY_ID": ak, "planted AWS_SECRET_ACCESS_KEY": sk, "planted AWS_SESSION_TOKEN": token,
        "STS access key": sts.access_key, "STS secret key": sts.secret_key, "STS session token": sts.session_token,
        "store root access key": store.access_key, "store root secret key": store.secret_key,
        "query token of the v2 source URL": q_source, "X-Amz-Signature of the v2 source URL": source_sig,
        "query token of the bad-sha URL": q_sha, "X-Amz-Signature of the bad-sha URL": bad_sha_sig,
        "query token of the bad-signature URL": q_bad, "planted X-Amz-Signature": bad_sig,
        "query token of the dataset URL": q_dataset, "X-Amz-Signature of the dataset URL": dataset_sig,
    }
    assert all(len(v) >= 8 for v in values.values())
    return Planted(values, source_url, hashlib.sha256(v2).hexdigest(), bad_sha_url, bad_signature_url,
                   hashlib.sha256(v1).hexdigest(), dataset_url)


# ---------------------------------------------------------------- specs


def _spec(name: str, *, version: str, uri: str, secret: str, sha256: str | None = None,
          validation: dict[str, Any] | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"uri": uri, "credentialsSecret": secret, **({"sha256": sha256} if sha256 else {})}
    rollout: dict[str, Any] = {"strategy": "Canary", "maxSurgeGpus": 1, "steps": [{"weight": 50, "pause": "5s"}],
                               "analysis": {"interval": "3s", "minRequests": 10, "maxLatencyRatio": 3.0}}
    if validation is not None:
        rollout["validation"] = validation
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": "digits", "version": version, "source": source, "format": "onnx",
                               "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": 1, "rollout": rollout}}


def _md(tc: ClusterHandle, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", NS)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def _current(md: dict[str, Any]) -> bool:
    return (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]


# ---------------------------------------------------------------- what a reader of the namespace sees


@dataclass
class Run:
    """One container run's log, read with `kubectl logs` (`--previous` for the run before a restart)."""

    pod: str
    owner: str  # the ModelDeployment (serving pods) or the Job (validation pods)
    container: str
    previous: bool
    text: str


@dataclass
class Collector:
    """Reads the namespace every POLL_S while the paths run, and once more at the end: each container
    run's log (kept: a rolled-back canary's pod is deleted with its logs) and every pod's status."""

    tc: ClusterHandle
    runs: dict[str, Run] = field(default_factory=dict)  # by container ID (+ ' --previous')
    statuses: dict[str, str] = field(default_factory=dict)  # place -> pod status / termination message
    errors: list[str] = field(default_factory=list)
    _final: set[str] = field(default_factory=set)
    _read_at: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.poll(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll(final=False)
            except Exception as e:  # a transient API error: the next poll reads again
                self.errors.append(repr(e)[:300])

    def _read(self, pod: str, owner: str, container: str, cid: str, *, previous: bool, done: bool,
              final: bool, waiting: bool = False) -> None:
        """Read one run's log. A finished run is read once as the current one and once more as the
        previous one after its container restarted (that read cannot be of another run): with
        --previous while the new run runs or has ended; while the container waits to restart
        (CrashLoopBackOff) its last run is what `kubectl logs` shows, and --previous would name the
        run before it, which the kubelet prunes when it starts an init container again."""
        key = f"{cid} --previous" if previous else cid
        if not cid or key in self._final:
            return
        if not done and not final and time.monotonic() - self._read_at.get(key, -1e9) < RUNNING_REFRESH_S:
            return
        flag = ["--previous"] if previous and not waiting else []
        out = self.tc.kubectl("logs", "-n", NS, pod, "-c", container, *flag, check=False)
        if out.returncode != 0 or out.stdout.startswith(GONE):
            return
        if done and not previous and not out.stdout:
            return  # restarted between the two reads: this run is read with --previous instead
        self.runs[key] = Run(pod, owner, container, previous, out.stdout)
        self._read_at[key] = time.monotonic()
        if done:
            self._final.add(key)

    def poll(self, final: bool) -> None:
        for pod in self.tc.kubectl_json("get", "pods", "-n", NS)["items"]:
            name = pod["metadata"]["name"]
            labels = pod["metadata"].get("labels") or {}
            owner = labels.get("modeldeploy.io/name") or labels.get("batch.kubernetes.io/job-name", "")
            status = pod.get("status") or {}
            self.statuses[f"status of pod {name}"] = json.dumps(status)
            for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                c = cs["name"]
                for key in ("state", "lastState"):
                    term = (cs.get(key) or {}).get("terminated") or {}
                    if term.get("message"):
                        where = f"termination message of {name}/{c} ({term.get('containerID', key)[-12:]})"
                        self.statuses[where] = term["message"]
                state = cs.get("state") or {}
                if "terminated" in state or "running" in state:
                    self._read(name, owner, c, cs.get("containerID", ""), previous=False,
                               done="terminated" in state, final=final)
                last = (cs.get("lastState") or {}).get("terminated") or {}
                if last:
                    self._read(name, owner, c, last.get("containerID", ""), previous=True, done=True, final=final,
                               waiting="waiting" in state)

    def logs_of(self, owner: str, container: str) -> list[Run]:
        return [r for r in self.runs.values() if r.owner == owner and r.container == container]


@dataclass
class Outcome:
    planted: Planted
    seen: Collector
    mds: dict[str, dict[str, Any]]  # final objects
    at_outcome: dict[str, dict[str, Any]]  # each path's ModelDeployment when its outcome showed
    places: dict[str, str]  # everything searched: place -> text
    deployments: str  # the Deployments' JSON: the sources' URLs are in the pod templates, by design
    planted_secret: str  # the planted Secret's JSON: its values, base64-encoded
    seconds: float


def _wait_for_condition(tc: ClusterHandle, name: str, ctype: str, status: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        md = _md(tc, name)
        return md if _current(md) and _cond(md, ctype).get("status") == status else None

    return wait_for(done, timeout, interval=1, message=f"{name}: {ctype}={status}")


def _wait_for_canary(tc: ClusterHandle, done: Callable[[dict[str, Any]], bool], message: str) -> dict[str, Any]:
    """GOOD once the operator has seen its latest spec and status.canary satisfies `done`."""
    def check() -> dict[str, Any] | None:
        md = _md(tc, GOOD)
        return md if _current(md) and done((md.get("status") or {}).get("canary") or {}) else None

    return wait_for(check, 240, interval=1, message=message)


def _restarted_loader(tc: ClusterHandle, name: str) -> bool:
    pods = tc.kubectl_json("get", "pods", "-n", NS, "-l", f"modeldeploy.io/name={name}")["items"]
    return any(cs["name"] == LOADER and int(cs.get("restartCount", 0)) >= 1
               and (cs.get("lastState") or {}).get("terminated")
               for p in pods for cs in (p.get("status") or {}).get("initContainerStatuses") or [])


def _operator_logs(tc: ClusterHandle) -> dict[str, str]:
    out: dict[str, str] = {}
    for pod in tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE)["items"]:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            out[f"operator log {name}/{cs['name']}"] = tc.kubectl(
                "logs", "-n", op.SYSTEM_NAMESPACE, name, "-c", cs["name"], check=False).stdout
            if int(cs.get("restartCount", 0)) > 0:
                out[f"operator log {name}/{cs['name']} --previous"] = tc.kubectl(
                    "logs", "-n", op.SYSTEM_NAMESPACE, name, "-c", cs["name"], "--previous", check=False).stdout
    return out


@pytest.fixture(scope="module")
def outcome(real_cluster: ClusterHandle, stack: dict[str, Any]) -> Iterator[Outcome]:
    tc, store = real_cluster, stack["store"]
    began = time.monotonic()
    planted = _plant(tc, store)
    seen = Collector(tc)
    seen.start()
    at: dict[str, dict[str, Any]] = {}
    try:
        tc.apply([
            _spec(GOOD, version="1", uri=f"s3://{BUCKET}/{V1}", secret=STS_SECRET),
            _spec(BAD_KEY, version="1", uri=f"s3://{BUCKET}/{V1}", secret=PLANTED_SECRET),
            _spec(STORE_DOWN, version="1", uri=f"s3://{BUCKET}/{V1}", secret=DOWN_SECRET),
            _spec(BAD_SHA, version="1", uri=planted.bad_sha_url, secret=STS_SECRET,
                  sha256=hashlib.sha256(b"not the model").hexdigest()),
            _spec(BAD_SIGNATURE, version="1", uri=planted.bad_signature_url, secret=STS_SECRET,
                  sha256=planted.v1_sha256),
        ], NS)
        # Success over s3:// with the STS Secret (key, secret and session token).
        at["v1"] = _wait_for_condition(tc, GOOD, "Ready", "True", 240)
        # A canary over the presigned http URL; its validation Job has the planted Secret: 403.
        tc.apply(_spec(GOOD, version="2", uri=planted.source_url, secret=PLANTED_SECRET, sha256=planted.source_sha256,
                       validation={"datasetUri": f"s3://{BUCKET}/{DATASET}", "minAccuracy": 0.5}), NS)
        at["v2"] = _wait_for_canary(tc, lambda can: can.get("phase") == "RolledBack", "v2 canary rolled back")
        # Another canary, its Job fetching the presigned dataset with the STS Secret: passes.
        tc.apply(_spec(GOOD, version="3", uri=f"s3://{BUCKET}/{V2}", secret=STS_SECRET,
                       validation={"datasetUri": planted.dataset_url, "minAccuracy": 0.5}), NS)
        v2_revision = at["v2"]["status"]["canary"]["revision"]
        at["v3"] = _wait_for_canary(tc, lambda can: can.get("revision") != v2_revision and (
            can.get("validation") or {}).get("verdict") in ("Passed", "Failed"), "v3 canary validated")
        # The failures (long since there): each with the loader restarted once, so --previous is read too.
        at[BAD_KEY] = _wait_for_condition(tc, BAD_KEY, "ModelLoaded", "False", 120)
        at[STORE_DOWN] = wait_for(lambda: (md := _md(tc, STORE_DOWN)) and _current(md) and _cond(
            md, "ModelLoaded").get("reason") == "FetchRetrying" and md, 120, interval=1, message="store-down retrying")
        at[BAD_SHA] = _wait_for_condition(tc, BAD_SHA, "ModelLoaded", "False", 120)
        at[BAD_SIGNATURE] = _wait_for_condition(tc, BAD_SIGNATURE, "ModelLoaded", "False", 120)
        for name in (BAD_KEY, STORE_DOWN, BAD_SHA, BAD_SIGNATURE):
            wait_for(lambda n=name: _restarted_loader(tc, n), 120, interval=1, message=f"{name}: loader restarted")
        time.sleep(POLL_S * 2)  # the restarted runs read at least once by the collector
    finally:
        seen.stop()
    mds = {md["metadata"]["name"]: md for md in tc.kubectl_json("get", MD, "-n", NS)["items"]}
    places: dict[str, str] = {f"status of ModelDeployment {name}": json.dumps(md.get("status") or {})
                              for name, md in mds.items()}
    places |= {f"status of ModelDeployment {name} when its outcome showed": json.dumps(md.get("status") or {})
               for name, md in at.items()}
    for ns in (NS, op.SYSTEM_NAMESPACE):
        places[f"events in {ns}"] = tc.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    for kind in ("jobs", "deployments"):
        places[f"status of {kind}"] = json.dumps([o.get("status") for o in tc.kubectl_json(
            "get", kind, "-n", NS)["items"]])
    places |= _operator_logs(tc)
    places |= seen.statuses
    for key, run in seen.runs.items():
        places[f"log of {run.pod}/{run.container} ({key.removeprefix('containerd://')[:12]}"
               f"{' --previous' if run.previous else ''})"] = run.text
    deployments = tc.kubectl("get", "deployments", "-n", NS, "-o", "json").stdout
    secret = tc.kubectl("get", "secret", PLANTED_SECRET, "-n", NS, "-o", "json").stdout
    yield Outcome(planted, seen, mds, at, places, deployments, secret, time.monotonic() - began)


# ---------------------------------------------------------------- the tests


def test_every_path_ran_and_ended_for_its_own_reason(outcome: Outcome) -> None:
    at, seen = outcome.at_outcome, outcome.seen
    # Success: loaded over s3:// with the STS credentials (the store refuses them without the token).
    assert _cond(at["v1"], "ModelLoaded")["status"] == "True"
    # v2: loaded over the presigned URL (its pod became ready), then its Job got 403 with the planted keys.
    can2 = at["v2"]["status"]["canary"]
    assert can2["rollbackReason"] == "ValidationFailed", can2
    assert can2["validation"]["verdict"] == "Failed" and "HTTP 403" in can2["validation"]["message"], can2
    # v3: its Job fetched the presigned dataset with the STS Secret and judged the canary.
    can3 = at["v3"]["status"]["canary"]
    assert can3["validation"]["verdict"] == "Passed", can3
    # The failures, each with its reason in ModelLoaded and Degraded.
    expected = {BAD_KEY: ("False", "LoadFailed", "HTTP 403"),
                STORE_DOWN: ("Unknown", "FetchRetrying", "network error"),
                BAD_SHA: ("False", "LoadFailed", "sha256 mismatch"),
                BAD_SIGNATURE: ("False", "LoadFailed", "(SignatureDoesNotMatch)")}
    for name, (status, reason, text) in expected.items():
        loaded, degraded = _cond(at[name], "ModelLoaded"), _cond(at[name], "Degraded")
        assert (loaded["status"], loaded["reason"]) == (status, reason), (name, loaded)
        assert text in loaded["message"] and text in degraded["message"], (name, loaded, degraded)
        assert degraded["status"] == "True", (name, degraded)
        runs = seen.logs_of(name, LOADER)
        # A restarted run read too: with --previous while the next run runs, or as the current run once
        # it ended. The kubelet keeps one ended run of an init container (it prunes the others before
        # each restart), so --previous of a loader that fails within a second is mostly gone already.
        run_ids = {key.removesuffix(" --previous") for key, r in seen.runs.items()
                   if r.owner == name and r.container == LOADER}
        assert any(r.previous for r in runs) or len(run_ids) >= 2, f"{name}: no restarted loader run read"
        assert any(f"{LOADER}: error: " in r.text and text in r.text for r in runs), (name, [r.text for r in runs])
    assert "Connection refused" in _cond(at[STORE_DOWN], "ModelLoaded")["message"]
    # The success paths' logs were read too: loaders that fetched, both Jobs' pods.
    assert any("fetched s3://" in r.text for r in seen.logs_of(GOOD, LOADER))
    assert any("fetched http://" in r.text for r in seen.logs_of(GOOD, LOADER))
    jobs = [r for r in seen.runs.values() if r.container == "validate"]
    assert any("HTTP 403" in r.text for r in jobs), [r.text for r in jobs]
    assert any("validate: passed: " in r.text for r in jobs), [r.text for r in jobs]
    # The operator's log covers this namespace (its decisions are logged with their messages).
    assert any(f"{NS}/{GOOD}" in text for place, text in outcome.places.items() if place.startswith("operator log"))
    print(f"\nsecrets-never-leak: paths driven in {outcome.seconds:.0f}s; collector errors: {seen.errors[:3]}")


def _forms(value: str) -> set[str]:
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
            base64.b64encode(value.encode()).decode()}


def test_no_planted_value_appears_anywhere_a_user_reads(outcome: Outcome) -> None:
    values, places = outcome.planted.values, outcome.places
    # The search finds values where they are by design: a source URL in a pod template's environment,
    # the planted keys (base64) in their Secret.
    assert any(f in outcome.deployments for f in _forms(values["query token of the bad-sha URL"]))
    assert all(any(f in outcome.planted_secret for f in _forms(values[f"planted {k}"]))
               for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    assert len(places) > 20 and all(isinstance(t, str) for t in places.values())
    found = sorted({(what, place, sum(text.count(f) for f in _forms(value)))
                    for what, value in values.items() for place, text in places.items()
                    if any(f in text for f in _forms(value))})
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "secrets-never-leak.json").write_text(json.dumps({
        "seconds": round(outcome.seconds), "planted": sorted(values),
        "places": {place: len(text) for place, text in sorted(places.items())},
        "found": [list(f) for f in found]}, indent=1))
    assert not found, "planted secrets found:\n" + "\n".join(f"  {what}: {n}x in {place}" for what, place, n in found)
