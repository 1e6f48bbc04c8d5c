"""Built revisions, decided without a cluster: the build Job's outcome read from its pods, status
and conditions, and whole reconcile passes against an in-memory API (one Job per revision, the
Deployment only once the artifact is recorded, failures deterministic or transient)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy import constants as c
from modeldeploy.config import Settings
from modeldeploy.kube.client import Conflict, NotFound, WriteCounter
from modeldeploy.planning import build as b
from modeldeploy.planning import switch
from modeldeploy.planning.observe import RevisionState, pod_trouble
from modeldeploy.reconciler import Reconciler
from tests.integration.invalid_specs import BASE_SPEC, apply_patch

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
KEY = "digits-36b63aabb80daca386d31b25979672ae"
SHA = "1d7b05ce3a66c2259fed500f6aa63df7fd7fc7b3aa310cddc6fd58c4b7e147d4"
BUILT = {"result": "built", "key": KEY, "modelName": "digits", "modelSha256": SHA, "quantized": True,
         "gates": {"agreement": 0.99, "samples": 320, "origin": "validation data", "fp32Seconds": 0.4,
                   "int8Seconds": 0.2, "speedup": 2.0, "fp32Accuracy": 0.97, "int8Accuracy": None},
         "buildSeconds": 12.5, "builtAt": "2026-12-02T11:59:00Z", "files": 2, "bytes": 100, "uploaded": 2,
         "seconds": 13.0, "store": "s3://artifacts/" + KEY}


def _ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def job(*, complete: bool = False, failed: str = "", failed_at: dt.datetime = NOW, attempts: int = 0) -> dict[str, Any]:
    conds = []
    if complete:
        conds.append({"type": "Complete", "status": "True", "lastTransitionTime": _ts(NOW)})
    if failed:
        conds.append({"type": "Failed", "status": "True", "reason": failed, "lastTransitionTime": _ts(failed_at)})
    return {"metadata": {"name": "digits-build-abc", "uid": "j1"},
            "status": {"conditions": conds, "failed": attempts, "succeeded": 1 if complete else 0}}


def pod(exit_code: int, message: str, *, created: str = "2026-12-02T11:58:00Z", reason: str = "") -> dict[str, Any]:
    term = {"exitCode": exit_code, "message": message, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
    return {"metadata": {"name": f"p-{created}", "creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "build", "state": {"terminated": term}}]}}


def failure_message(code: int, reason: str) -> str:
    return json.dumps({"result": "failed", "exitCode": code, "transient": code == 75, "reason": reason})


# ---------------------------------------------------------------- the Job's outcome


def test_a_completed_build_is_recorded_with_its_numbers() -> None:
    state = b.from_job("abc", job(complete=True), [pod(0, "artifact: log line\n" + json.dumps(BUILT))], NOW)
    assert state.reason == b.Reason.BUILT and state.ready and state.new_result
    assert state.artifact == {"key": KEY, "modelSha256": SHA, "quantized": True, "reused": False,
                              "buildSeconds": 12.5, "builtAt": "2026-12-02T11:59:00Z",
                              "recordedAt": "2026-12-02T12:00:00Z",  # when this pass recorded it
                              "gates": {"agreement": 0.99, "samples": 320, "origin": "validation data",
                                        "fp32Seconds": 0.4, "int8Seconds": 0.2, "speedup": 2.0,
                                        "fp32Accuracy": 0.97}}  # no nulls: a merge patch would drop the key
    assert KEY in state.message and "12.5s" in state.message


def test_a_reused_artifact_says_so() -> None:
    state = b.from_job("abc", job(complete=True), [pod(0, json.dumps({**BUILT, "result": "reused", "uploaded": 0}))],
                       NOW)
    assert state.reason == b.Reason.REUSED and state.artifact is not None and state.artifact["reused"] is True


def test_a_deterministic_failure_fails_with_the_builders_message() -> None:
    said = "sha256 mismatch: expected 1d7b05ce…, got 6154d364…"
    state = b.from_job("abc", job(failed="PodFailurePolicy", attempts=1), [pod(1, failure_message(1, said))], NOW)
    assert state.failed and state.reason == b.Reason.BUILD_FAILED and said in state.failure
    assert state.condition_status() is False and state.new_result


@pytest.mark.parametrize("code", [75, 77, 65])
def test_transient_trouble_never_fails_and_is_retried(code: int) -> None:
    running = b.from_job("abc", job(attempts=1), [pod(code, failure_message(code, "store unreachable"))], NOW)
    assert running.reason == b.Reason.BUILD_RETRYING and not running.failed and "store unreachable" in running.message
    just_gave_up = b.from_job("abc", job(failed="BackoffLimitExceeded", attempts=5),
                              [pod(code, failure_message(code, "store unreachable"))], NOW)
    assert just_gave_up.reason == b.Reason.BUILD_RETRYING and not just_gave_up.failed
    assert not just_gave_up.replace_job  # the Job stays a while, so its pods can be read
    later = b.from_job("abc", job(failed="BackoffLimitExceeded", attempts=5, failed_at=NOW - dt.timedelta(minutes=2)),
                       [pod(code, failure_message(code, "store unreachable"))], NOW)
    assert later.replace_job and not later.failed


def test_an_oom_killed_build_that_kept_failing_fails_the_revision() -> None:
    state = b.from_job("abc", job(failed="BackoffLimitExceeded", attempts=5), [pod(137, "", reason="OOMKilled")], NOW)
    assert state.failed and "OOMKilled" in state.failure


def test_the_newest_pod_speaks_for_the_job() -> None:
    pods = [pod(0, json.dumps(BUILT), created="2026-12-02T11:59:00Z"),
            pod(75, failure_message(75, "cut short"), created="2026-12-02T11:58:00Z")]
    assert b.from_job("abc", job(complete=True, attempts=1), pods, NOW).ready


def test_a_running_build_names_why_its_pod_waits() -> None:
    waiting = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"name": "build", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}}
    state = b.from_job("abc", job(), [waiting], NOW)
    assert state.reason == b.Reason.BUILDING and "ImagePullBackOff" in state.message
    assert state.condition_status() is None


def test_an_int8_build_whose_gate_triton_cannot_start_names_it() -> None:
    waiting = {"metadata": {"name": "p"}, "status": {
        "initContainerStatuses": [{"name": "gate-triton", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "Back-off pulling image nvcr.io/nvidia/tritonserver:26.10-py3"}}}],
        "containerStatuses": [{"name": "build", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    state = b.from_job("abc", job(), [waiting], NOW)
    assert state.reason == b.Reason.BUILDING
    assert "ImagePullBackOff" in state.message and "tritonserver:26.10" in state.message
    assert "PodInitializing" not in state.message


def test_recorded_builds_come_from_status_not_from_the_job() -> None:
    prev = {"revisions": [{"name": "digits-abc", "revision": "abc", "artifact": {"key": KEY, "modelSha256": SHA,
                                                                                  "quantized": False,
                                                                                  "reused": True}},
                          {"name": "digits-def", "revision": "def", "buildFailure": "build failed: gate"}]}
    done = b.recorded(prev, "abc")
    assert done is not None and done.reason == b.Reason.REUSED and not done.new_result
    failed = b.recorded(prev, "def")
    assert failed is not None and failed.failure == "build failed: gate"
    assert b.recorded(prev, "xyz") is None


def test_fetch_exits_of_a_built_revision_are_trouble_not_failure() -> None:
    for code, reason in ((65, "ArtifactCorrupt"), (66, "ArtifactNotBuilt"), (77, "ArtifactStoreRefused")):
        p = {"metadata": {}, "status": {"initContainerStatuses": [
            {"name": c.CONTAINER_LOADER, "state": {"terminated": {"exitCode": code, "message": "x"}}}]}}
        trouble = pod_trouble(p)
        assert not trouble.failure and trouble.reason == reason


def test_a_build_failure_fails_the_first_revision_and_stops_a_new_one() -> None:
    first = switch.plan(switch.SwitchInput(desired_replicas=3, gpus_per_pod=0, strategy="Canary", current="b",
                                           stable=None, failed=None, startup_timeout_seconds=60,
                                           build_failure="build failed: gate"), {})
    assert first.failed == "b" and first.failure == "build failed: gate"
    stable = RevisionState(revision="a", deployment="d-a", uid="u", spec_replicas=3, replicas=3, ready=3,
                           model_version="1")
    later = switch.plan(switch.SwitchInput(desired_replicas=3, gpus_per_pod=0, strategy="Canary", current="b",
                                           stable="a", failed=None, startup_timeout_seconds=60,
                                           build_failure="build failed: gate"), {"a": stable})
    assert later.replicas == {"a": 3, "b": 0} and later.failed == "b" and later.stable == "a"
    assert any(reason == switch.Reason.FAILED for reason, _ in later.decisions)


# ---------------------------------------------------------------- whole passes, in-memory API


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in (labels or {}).items())


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class MemoryKube:
    """Just enough of kube.client.Kube for a reconcile pass: objects in a dict, every call counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes = WriteCounter()
        self.version = 1
        self.lock = threading.Lock()

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and ns == (namespace or "") and _matches(o, labels)]

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if key in self.objects:
            raise Conflict(str(key))
        self.writes.add("create")
        new = copy.deepcopy(dict(obj))
        new["metadata"]["uid"] = f"uid-{len(self.objects)}"
        self.objects[key] = self._bump(new)
        return copy.deepcopy(new)

    def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.writes.add("apply")
        old = self.objects.get(key)
        new = copy.deepcopy(dict(obj))
        new["metadata"]["uid"] = old["metadata"]["uid"] if old else f"uid-{len(self.objects)}"
        if old and "status" in old:
            new["status"] = old["status"]
        self.objects[key] = self._bump(new)
        return copy.deepcopy(new)

    def patch_status(self, kind: str, namespace: str, name: str, st: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        obj = self.objects[(kind, namespace, name)]
        if resource_version and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(name)
        self.writes.add("patch_status")
        _merge(obj.setdefault("status", {}), st)
        return copy.deepcopy(self._bump(obj))

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.writes.add("scale")
        obj = self.objects[(kind, namespace, name)]
        obj["spec"]["replicas"] = replicas
        return copy.deepcopy(self._bump(obj))

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.writes.add("delete")
        if self.objects.pop((kind, namespace, name), None) is None:
            raise NotFound(name)

    def remove_annotation(self, *args: Any) -> None:
        raise AssertionError("not expected")

    def kind_installed(self, kind: str, namespace: str | None = None) -> bool:
        return False

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]


NS = "ml"
SPEC = apply_patch(BASE_SPEC, {"autoscaling": {"enabled": False}, "replicas": 3,
                               "model": {"source": {"sha256": SHA}}})


def _world(spec: dict[str, Any] | None = None, *, network_policy: str = "",
           artifact_store: str = "s3://artifacts") -> tuple[MemoryKube, Reconciler]:
    kube = MemoryKube()
    kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "digits", "namespace": NS,
                                                                           "generation": 1},
                 "spec": copy.deepcopy(spec or SPEC)})
    settings = Settings(artifact_store=artifact_store, artifact_store_secret="s3-creds" if artifact_store else "",
                        network_policy=network_policy)
    rec = Reconciler(kube, settings)  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    return kube, rec


def _md(kube: MemoryKube) -> dict[str, Any]:
    md = kube.get_or_none(c.KIND, NS, "digits")
    assert md is not None
    return md


def _cond(md: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    return next(x for x in md["status"]["conditions"] if x["type"] == ctype)


def _finish(kube: MemoryKube, job_obj: dict[str, Any], *, exit_code: int, message: str, condition: str,
            reason: str = "", at: dt.datetime | None = None) -> None:
    """What the Job controller and the kubelet would do: a pod that ran, the Job's final condition."""
    name = job_obj["metadata"]["name"]
    kube.objects[("Pod", NS, f"{name}-x")] = {
        "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": NS, "labels": {"job-name": name},
                                    "creationTimestamp": "2026-12-02T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": {
            "exitCode": exit_code, "message": message, "reason": "Completed" if exit_code == 0 else "Error"}}}]}}
    when = _ts(at or dt.datetime.now(dt.UTC))
    job_obj["spec"]["selector"] = {"matchLabels": {"job-name": name}}
    job_obj["status"] = {"conditions": [{"type": condition, "status": "True", "reason": reason,
                                         "lastTransitionTime": when}],
                         "succeeded" if exit_code == 0 else "failed": 1}


def test_a_revision_is_built_once_and_its_pods_only_fetch() -> None:
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    rec.reconcile(NS, "digits")
    (build_job,) = kube.of("Job")
    assert build_job["metadata"]["name"].startswith("digits-build-")
    assert kube.of("Deployment") == []  # nothing to serve before the artifact exists
    md = _md(kube)
    assert _cond(md, "ArtifactReady")["status"] == "Unknown" and _cond(md, "ArtifactReady")["reason"] == "Building"
    assert md["status"]["phase"] == "Loading"
    revision = build_job["metadata"]["labels"][c.LABEL_REVISION]
    assert [r["revision"] for r in md["status"]["revisions"]] == [revision]

    _finish(kube, build_job, exit_code=0, message=json.dumps(BUILT), condition="Complete")
    rec.reconcile(NS, "digits")
    md = _md(kube)
    (entry,) = md["status"]["revisions"]
    assert entry["artifact"]["key"] == KEY and entry["artifact"]["modelSha256"] == SHA
    assert entry["artifact"]["reused"] is False and entry["artifact"]["gates"]["speedup"] == 2.0
    assert entry["artifact"]["store"] == "s3://artifacts"  # where it was built: reuse stays there
    assert _cond(md, "ArtifactReady")["status"] == "True" and _cond(md, "ArtifactReady")["reason"] == "Built"
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 3
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][-2:] == ["--key", KEY]
    events = [e["reason"] for e in kube.of("Event")]
    assert events.count("BuildStarted") == 1 and events.count("Built") == 1

    # the Job goes by its TTL; status is the record: no new Job, the Deployment stays
    kube.objects.pop(("Job", NS, build_job["metadata"]["name"]))
    md_obj = kube.objects[(c.KIND, NS, "digits")]
    md_obj["spec"]["replicas"] = 5
    rec.reconcile(NS, "digits")
    assert kube.of("Job") == []
    assert kube.of("Deployment")[0]["spec"]["replicas"] == 5


def test_a_deterministic_build_failure_fails_the_revision_once() -> None:
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    (build_job,) = kube.of("Job")
    said = "source sha256 mismatch"
    _finish(kube, build_job, exit_code=1, message=failure_message(1, said), condition="Failed",
            reason="PodFailurePolicy")
    rec.reconcile(NS, "digits")
    md = _md(kube)
    assert md["status"]["failedRevision"] == build_job["metadata"]["labels"][c.LABEL_REVISION]
    assert md["status"]["phase"] == "Failed" and said in md["status"]["message"]
    assert _cond(md, "ArtifactReady")["status"] == "False" and _cond(md, "ArtifactReady")["reason"] == "BuildFailed"
    assert _cond(md, "ModelLoaded")["reason"] == "BuildFailed"
    assert said in md["status"]["revisions"][0]["buildFailure"]
    kube.objects.pop(("Job", NS, build_job["metadata"]["name"]))  # TTL
    rec.reconcile(NS, "digits")
    rec.reconcile(NS, "digits")
    assert kube.of("Job") == [] and kube.of("Deployment") == []  # not built again until the spec changes
    assert [e["reason"] for e in kube.of("Event")].count("BuildFailed") == 1


def test_transient_build_trouble_never_fails_the_revision_and_a_new_job_follows() -> None:
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    (build_job,) = kube.of("Job")
    _finish(kube, build_job, exit_code=75, message=failure_message(75, "store unreachable"), condition="Failed",
            reason="BackoffLimitExceeded", at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    rec.reconcile(NS, "digits")
    md = _md(kube)
    assert md["status"].get("failedRevision") is None and md["status"]["phase"] != "Failed"
    assert _cond(md, "ArtifactReady")["reason"] == "BuildRetrying"
    assert kube.of("Job") == []  # replaced: the next pass starts a new build
    rec.reconcile(NS, "digits")
    assert len(kube.of("Job")) == 1


def test_the_stable_revision_serves_untouched_while_a_new_one_builds() -> None:
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    _finish(kube, kube.of("Job")[0], exit_code=0, message=json.dumps(BUILT), condition="Complete")
    rec.reconcile(NS, "digits")
    (dep,) = kube.of("Deployment")
    first = dep["metadata"]["labels"][c.LABEL_REVISION]
    dep["status"] = {"replicas": 3, "readyReplicas": 3}
    for i in range(3):
        kube.objects[("Pod", NS, f"p{i}")] = {"kind": "Pod", "metadata": {
            "name": f"p{i}", "namespace": NS, "labels": dict(dep["spec"]["template"]["metadata"]["labels"])},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    rec.reconcile(NS, "digits")
    assert _md(kube)["status"]["phase"] == "Ready"
    before = copy.deepcopy(dep)

    md_obj = kube.objects[(c.KIND, NS, "digits")]
    md_obj["spec"]["model"]["version"] = "4"
    md_obj["metadata"]["generation"] = 2
    rec.reconcile(NS, "digits")
    jobs = kube.of("Job")
    assert len(jobs) == 2 and jobs[-1]["metadata"]["labels"][c.LABEL_REVISION] != first
    (still,) = kube.of("Deployment")  # no new Deployment, the old one neither re-rendered nor scaled
    assert still["spec"] == before["spec"]
    md = _md(kube)
    assert md["status"]["stableRevision"] == first and md["status"]["readyReplicas"] == 3
    assert _cond(md, "ArtifactReady")["reason"] == "Building" and md["status"]["phase"] == "Progressing"
    new = jobs[-1]["metadata"]["labels"][c.LABEL_REVISION]
    assert {r["revision"] for r in md["status"]["revisions"]} == {first, new}
    first_entry = next(r for r in md["status"]["revisions"] if r["revision"] == first)
    assert first_entry["artifact"]["key"] == KEY  # the stable revision's record is kept


def test_nothing_is_built_with_the_setting_off() -> None:
    kube, rec = _world()
    rec.settings = Settings()
    rec.builder.settings = rec.settings
    rec.reconcile(NS, "digits")
    assert kube.of("Job") == []
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["template"]["spec"]["initContainers"][0]["command"] == ["python", "-m", "modeldeploy.loader"]
    assert all(x["type"] != "ArtifactReady" for x in _md(kube)["status"]["conditions"])


# ---------------------------------------------------------------- the build Jobs' NetworkPolicy

NETWORK_POLICY = json.dumps({"enabled": True, "operatorNamespace": "modeldeploy-system",
                             "modelStore": [{"cidr": "10.244.3.253/32", "ports": [9000]}]})


def _policies(kube: MemoryKube) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.of("NetworkPolicy")}


def test_a_pass_fences_the_build_jobs_pod_with_the_other_policies() -> None:
    kube, rec = _world(network_policy=NETWORK_POLICY)
    rec.reconcile(NS, "digits")
    # the first pass creates the policies and no Job: the build pod never runs unfenced
    assert kube.of("Job") == [] and "digits-build" in _policies(kube)
    assert "waiting for NetworkPolicy digits-build" in _cond(_md(kube), "ArtifactReady")["message"]
    rec.reconcile(NS, "digits")  # the policy's watch event brings the next pass
    (build_job,) = kube.of("Job")
    policies = _policies(kube)
    assert set(policies) == {"digits", "digits-validation", "digits-build"}
    build = policies["digits-build"]
    md_uid = _md(kube)["metadata"]["uid"]
    assert [r["uid"] for r in build["metadata"]["ownerReferences"]] == [md_uid]
    pod_labels = build_job["spec"]["template"]["metadata"]["labels"]
    assert _matches({"metadata": {"labels": pod_labels}}, build["spec"]["podSelector"]["matchLabels"])
    assert "ingress" not in build["spec"] and build["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert build["spec"]["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "10.244.3.253/32"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}]
    created = next(e["message"] for e in kube.of("Event") if e["reason"] == "Created")
    assert "NetworkPolicy digits-build" in created

    applies = kube.writes.by_verb.get("apply", 0)
    rec.reconcile(NS, "digits")  # at rest: the policies are not written again
    assert kube.writes.by_verb.get("apply", 0) == applies and _policies(kube) == policies


def test_no_build_policy_without_an_artifact_store_or_without_network_policies() -> None:
    kube, rec = _world(network_policy=NETWORK_POLICY, artifact_store="")
    rec.reconcile(NS, "digits")
    assert kube.of("Job") == [] and set(_policies(kube)) == {"digits", "digits-validation"}
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    assert len(kube.of("Job")) == 1 and kube.of("NetworkPolicy") == []


def test_a_build_policy_the_operator_did_not_create_is_left_alone() -> None:
    kube, rec = _world(network_policy=NETWORK_POLICY)
    theirs = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "digits-build", "namespace": NS, "labels": {"team": "a"}},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    kube.create(theirs)
    before = copy.deepcopy(kube.objects[("NetworkPolicy", NS, "digits-build")])
    rec.reconcile(NS, "digits")
    rec.reconcile(NS, "digits")
    assert kube.objects[("NetworkPolicy", NS, "digits-build")] == before  # neither adopted, changed nor deleted
    assert kube.of("Job") == []  # a policy that is not ours may not fence the pod: no build starts
    assert set(_policies(kube)) == {"digits", "digits-validation", "digits-build"}
    md = _md(kube)
    assert any("NetworkPolicy ml/digits-build already exists" in w for w in md["status"]["warnings"])
