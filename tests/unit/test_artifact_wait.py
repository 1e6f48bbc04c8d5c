"""Two ModelDeployments of one key build it once (issue 14): while another ModelDeployment's build Job
of the same key is unfinished, no second Job starts; the revision waits (ArtifactReady=False,
WaitingForBuild, naming that build) and reuses its record once it is there. The decision is pure
(planning/reuse.wait_for); whole passes against the in-memory API check the wiring, two passes
started at the same moment included."""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from modeldeploy import constants as c
from modeldeploy.config import Settings
from modeldeploy.planning import build as b
from modeldeploy.planning import reuse
from modeldeploy.reconciler import Reconciler
from tests.unit.test_artifact_reuse import BUILT_RECORD, SPEC, AllNamespaces, _add, _cond, _jobs, _status
from tests.unit.test_built_revisions import BUILT

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
KEY = "digits-36b63aabb80daca386d31b25979672ae"


def _ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _job(namespace: str, name: str, revision: str, *, key: str = KEY, created: str = "2026-12-02T11:59:00Z",
         condition: str = "", at: dt.datetime = NOW, deleting: bool = False, owner: str = c.KIND) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"{name}-build-{revision}", "namespace": namespace, "creationTimestamp": created,
        "labels": {c.LABEL_NAME: name, c.LABEL_REVISION: revision, c.LABEL_ARTIFACT_KEY: key},
        "ownerReferences": [{"kind": owner, "name": name, "uid": f"u-{name}", "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = _ts(at)
    conds = [{"type": condition, "status": "True", "lastTransitionTime": _ts(at)}] if condition else []
    return {"kind": "Job", "metadata": meta, "status": {"conditions": conds}}


# ---------------------------------------------------------------- the decision (pure)


def test_the_key_is_a_label_only_when_it_can_be_one() -> None:
    assert reuse.key_labels(KEY) == {c.LABEL_ARTIFACT_KEY: KEY}
    assert reuse.key_labels(None) == {} and reuse.key_labels("") == {}
    assert reuse.key_labels("-starts-with-a-dash") == {} and reuse.key_labels("a" * 64) == {}


def test_an_unfinished_build_of_the_key_is_waited_for() -> None:
    state = reuse.wait_for(KEY, [_job("team-a", "digits", "r1")], revision="r9", namespace="team-b", name="digits",
                           now=NOW)
    assert state is not None and state.reason == b.Reason.WAITING and state.condition_status() is False
    assert not state.ready and not state.failed and not state.warning and state.new_result
    assert state.awaits == ("team-a", "digits")
    assert "team-a/digits" in state.message and "digits-build-r1" in state.message and KEY in state.message
    again = reuse.wait_for(KEY, [_job("team-a", "digits", "r1")], revision="r9", namespace="team-b", name="digits",
                           now=NOW, told=b.Reason.WAITING)
    assert again is not None and not again.new_result  # one Event per wait, the condition meanwhile


def test_the_oldest_build_of_another_model_is_named() -> None:
    jobs = [_job("zeta", "b", "r2", created="2026-12-02T11:59:30Z"), _job("alpha", "a", "r1"),
            _job("ml", "digits", "r1", created="2026-12-02T11:00:00Z")]
    state = reuse.wait_for(KEY, jobs, revision="r2", namespace="ml", name="digits", now=NOW)
    assert state is not None and state.awaits == ("alpha", "a") and "alpha/a (revision r1" in state.message


def test_what_is_not_waited_for() -> None:
    def waits(*jobs: dict[str, Any], key: str | None = KEY) -> bool:
        return reuse.wait_for(key, jobs, revision="r9", namespace="team-b", name="digits", now=NOW) is not None

    assert not waits()
    assert not waits(_job("team-b", "digits", "r9"))  # its own Job (the pass reads that one itself)
    assert not waits(_job("team-b", "digits", "r1"))  # its older revision's: never recorded, nothing to reuse
    assert not waits(_job("team-a", "digits", "r1", key="digits-0000"))  # another key
    assert not waits(_job("team-a", "digits", "r1"), key=None)  # a key the operator cannot know
    assert not waits(_job("team-a", "digits", "r1", condition="Failed"))  # its owner fails or retries it
    assert not waits(_job("team-a", "digits", "r1", deleting=True))
    assert not waits(_job("team-a", "digits", "r1", owner="CronJob"))  # not a ModelDeployment's build
    # complete: its record is on its way for a while (the owner's pass), then the Job says nothing more
    assert waits(_job("team-a", "digits", "r1", condition="Complete", at=NOW - dt.timedelta(seconds=5)))
    assert not waits(_job("team-a", "digits", "r1", condition="Complete", at=NOW - dt.timedelta(minutes=5)))


def test_a_build_that_never_got_going_is_not_waited_out() -> None:
    """A Job whose pod stays Pending (unschedulable where its owner asked, an image that cannot be
    pulled) would hold the waiter until its deadline: past STALLED_AFTER_SECONDS the waiter builds."""
    def waits(status: dict[str, Any], age_s: float) -> bool:
        job = _job("team-a", "digits", "r1", created=_ts(NOW - dt.timedelta(seconds=age_s)))
        job["status"].update(status)
        return reuse.wait_for(KEY, [job], revision="r9", namespace="team-b", name="digits", now=NOW) is not None

    limit = reuse.STALLED_AFTER_SECONDS
    assert waits({"active": 1}, limit - 60)  # young: a node may still be on its way
    assert not waits({"active": 1}, limit + 1)  # old, and no pod was ever Ready
    assert not waits({}, limit + 1)
    assert waits({"active": 1, "ready": 1}, 4 * limit)  # a long build that runs
    assert waits({"active": 1, "failed": 2}, 4 * limit)  # retrying: its pods ran (and its owner retries it)
    assert waits({"active": 1, "succeeded": 1}, 4 * limit)  # complete, the condition not yet written


def test_the_build_job_carries_its_key() -> None:
    kube, rec = _world()
    rec.reconcile("ml", "digits")
    (job,) = _jobs(kube, "ml")
    key = reuse.job_key(job["spec"]["template"]["spec"]["containers"][0]["env"])  # what the Job computes
    assert key is not None and job["metadata"]["labels"][c.LABEL_ARTIFACT_KEY] == key
    assert c.LABEL_ARTIFACT_KEY not in job["spec"]["template"]["metadata"]["labels"]


# ---------------------------------------------------------------- whole passes, in-memory API


class SlowJobLists(AllNamespaces):
    """Job LISTs take a while: two passes started together both read before either creates."""

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = super().list(kind, namespace, labels)
        if kind == "Job":
            time.sleep(0.1)  # what it read may be old by the time the pass acts on it
        return found

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            return super().create(obj)

    def patch_status(self, kind: str, namespace: str, name: str, st: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        with self.lock:
            return super().patch_status(kind, namespace, name, st, resource_version)


def _world(kube: AllNamespaces | None = None) -> tuple[AllNamespaces, Reconciler]:
    kube = kube or AllNamespaces()
    _add(kube, "ml", "digits", SPEC)
    rec = Reconciler(kube, Settings(artifact_store="s3://artifacts", artifact_store_secret="s3-creds"))  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    return kube, rec


def _events(kube: AllNamespaces, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.of("Event") if e["metadata"]["namespace"] == namespace and e["reason"] == reason]


def _finish(kube: AllNamespaces, job: Mapping[str, Any], *, failed: bool = False) -> None:
    """The Job's pod ends: built (the key it computed from its own environment) or failed for good."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    key = job["metadata"]["labels"][c.LABEL_ARTIFACT_KEY]
    result = ({"result": "failed", "exitCode": 1, "transient": False, "reason": "sha256 mismatch"} if failed
              else {**BUILT, "key": key})
    kube.objects[("Pod", namespace, f"{name}-x")] = {
        "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": namespace, "labels": {"job-name": name},
                                    "creationTimestamp": "2026-12-02T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": {
            "exitCode": 1 if failed else 0, "message": json.dumps(result)}}}]}}
    stored = kube.objects[("Job", namespace, name)]
    stored["spec"]["selector"] = {"matchLabels": {"job-name": name}}
    now = _ts(dt.datetime.now(dt.UTC))
    stored["status"] = ({"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                         "lastTransitionTime": now}], "failed": 1} if failed else
                        {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}],
                         "succeeded": 1})


def test_a_second_model_of_the_key_waits_for_the_first_build_then_reuses_it() -> None:
    kube, rec = _world()
    woken: list[tuple[str, str]] = []
    rec.wake = lambda namespace, name: woken.append((namespace, name))
    rec.reconcile("ml", "digits")
    (job,) = _jobs(kube, "ml")
    _add(kube, "team-b", "digits", SPEC)
    rec.reconcile("team-b", "digits")
    rec.reconcile("team-b", "digits")  # a resync: still waiting, no second Event
    assert _jobs(kube, "team-b") == []
    st = _status(kube, "team-b", "digits")
    cond = _cond(st, "ArtifactReady")
    assert cond["status"] == "False" and cond["reason"] == "WaitingForBuild"
    assert "ml/digits" in cond["message"] and job["metadata"]["name"] in cond["message"]
    assert st["phase"] != "Failed" and "failedRevision" not in st and "artifact" not in st["revisions"][0]
    assert not [d for d in kube.of("Deployment") if d["metadata"]["namespace"] == "team-b"]
    (event,) = _events(kube, "team-b", "WaitingForBuild")
    assert event["type"] == "Normal" and "ml/digits" in event["message"]

    _finish(kube, job)
    rec.reconcile("ml", "digits")  # records the build, and wakes the model that waited for it
    assert woken == [("team-b", "digits")]
    rec.reconcile("team-b", "digits")
    st = _status(kube, "team-b", "digits")
    (entry,) = st["revisions"]
    assert entry["artifact"]["reused"] is True and entry["artifact"]["reusedFrom"].startswith("ml/digits revision")
    assert _cond(st, "ArtifactReady")["reason"] == "Reused" and _jobs(kube, "team-b") == []
    assert [d for d in kube.of("Deployment") if d["metadata"]["namespace"] == "team-b"]
    assert len(kube.of("Job")) == 1 and not _events(kube, "team-b", "BuildStarted")


def test_a_build_that_failed_for_good_lets_the_waiter_build_its_own() -> None:
    kube, rec = _world()
    rec.reconcile("ml", "digits")
    (job,) = _jobs(kube, "ml")
    _add(kube, "team-b", "digits", SPEC)
    rec.reconcile("team-b", "digits")
    assert _cond(_status(kube, "team-b", "digits"), "ArtifactReady")["reason"] == "WaitingForBuild"
    _finish(kube, job, failed=True)
    rec.reconcile("ml", "digits")
    assert _status(kube, "ml", "digits")["phase"] == "Failed"
    rec.reconcile("team-b", "digits")
    assert len(_jobs(kube, "team-b")) == 1  # its own build: it decides for itself
    assert _cond(_status(kube, "team-b", "digits"), "ArtifactReady")["reason"] == "Building"


def test_a_rebuild_does_not_wait_for_another_build_of_the_key() -> None:
    kube, rec = _world()
    rec.reconcile("ml", "digits")
    _add(kube, "team-b", "digits", SPEC)
    md = kube.objects[(c.KIND, "team-b", "digits")]
    rec.reconcile("team-b", "digits")
    revision = _status(kube, "team-b", "digits")["revisions"][0]["revision"]
    md["status"]["revisions"] = [{"name": f"digits-{revision}", "revision": revision, "artifactRebuilds": 1}]
    rec.reconcile("team-b", "digits")
    assert len(_jobs(kube, "team-b")) == 1  # other records (and builds) of the key may describe the lost copy


def test_two_models_of_one_key_created_at_the_same_moment_start_one_job() -> None:
    kube, rec = _world(SlowJobLists())
    _add(kube, "team-b", "digits", SPEC)
    passes = [threading.Thread(target=rec.reconcile, args=(ns, "digits")) for ns in ("ml", "team-b")]
    for t in passes:
        t.start()
    for t in passes:
        t.join()
    (job,) = kube.of("Job")
    builder = job["metadata"]["namespace"]
    waiter = "team-b" if builder == "ml" else "ml"
    cond = _cond(_status(kube, waiter, "digits"), "ArtifactReady")
    assert cond["reason"] == "WaitingForBuild" and f"{builder}/digits" in cond["message"]


def test_a_record_already_there_wins_over_waiting() -> None:
    kube, rec = _world()
    rec.reconcile("ml", "digits")  # ml/digits builds (unfinished)
    (job,) = _jobs(kube, "ml")
    key = job["metadata"]["labels"][c.LABEL_ARTIFACT_KEY]
    _add(kube, "zeta", "old", SPEC)
    kube.objects[(c.KIND, "zeta", "old")]["status"] = {"revisions": [
        {"name": "old-r0", "revision": "r0", "artifact": {**copy.deepcopy(BUILT_RECORD), "key": key}}]}
    _add(kube, "team-b", "digits", SPEC)
    rec.reconcile("team-b", "digits")
    st = _status(kube, "team-b", "digits")
    assert _cond(st, "ArtifactReady")["reason"] == "Reused"
    assert st["revisions"][0]["artifact"]["reusedFrom"] == "zeta/old revision r0"
