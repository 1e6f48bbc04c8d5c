"""An artifact that fails verification is never served: fetched again, and rebuilt when the store's
copy is gone (66) or corrupt (65), at most MAX_REBUILDS times per revision (issue 14). The pure
decision, then whole passes against the in-memory API of test_built_revisions."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from modeldeploy import constants as c
from modeldeploy import reconciler as reconciler_module
from modeldeploy.planning import build as b
from modeldeploy.planning import rebuild
from modeldeploy.reconciler import Reconciler
from tests.unit.test_built_revisions import BUILT, KEY, NS, MemoryKube, _cond, _md, _ts, _world

T0 = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
RECORDED = "2026-12-02T12:00:00Z"
ARTIFACT = {"key": KEY, "modelSha256": "s", "quantized": False, "reused": False, "recordedAt": RECORDED}


def serving_pod(name: str, revision: str, code: int, finished: str, *, now_state: str = "waiting",
                said: str = "") -> dict[str, Any]:
    """A serving pod whose fetch init container last ended with `code` at `finished`."""
    term = {"exitCode": code, "finishedAt": finished, "reason": "Completed" if code == 0 else "Error",
            "message": said or json.dumps({"result": "failed", "exitCode": code, "reason": f"exit {code}"})}
    state: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff"}} if now_state == "waiting" else \
        {"running": {}} if now_state == "running" else {"terminated": {**term, "exitCode": 0, "message": "{}"}}
    return {"kind": "Pod", "metadata": {"name": name, "namespace": NS,
                                        "labels": {c.LABEL_NAME: "digits", c.LABEL_REVISION: revision}},
            "status": {"initContainerStatuses": [{"name": c.CONTAINER_LOADER, "state": state,
                                                  "lastState": {"terminated": term}}]}}


def _previous(rebuilds: int = 0, reason: str = "Built") -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "digits-abc", "revision": "abc", "artifact": ARTIFACT}
    if rebuilds:
        entry[rebuild.FIELD] = rebuilds
    return {"revisions": [entry], "conditions": [{"type": "ArtifactReady", "status": "True", "reason": reason}]}


# ---------------------------------------------------------------- which fetch failures count


@pytest.mark.parametrize(("code", "reason"), [(66, "ArtifactNotBuilt"), (65, "ArtifactCorrupt")])
def test_a_fetch_that_found_the_copy_gone_or_corrupt_after_the_record_counts(code: int, reason: str) -> None:
    (found,) = rebuild.failures([serving_pod("p1", "abc", code, "2026-12-02T12:00:07Z")], "abc", RECORDED)
    assert (found.pod, found.exit_code, found.reason) == ("p1", code, reason)
    assert "pod p1" in found.describe() and reason in found.describe()


def test_what_does_not_count() -> None:
    after = "2026-12-02T12:00:07Z"
    pods = [
        serving_pod("before", "abc", 66, "2026-12-02T11:59:59Z"),  # while the rebuild ran: stale
        serving_pod("same-second", "abc", 66, RECORDED),
        serving_pod("refused", "abc", 77, after),  # the store refuses access: not the copy's fault
        serving_pod("transient", "abc", 75, after),
        serving_pod("other-revision", "old", 66, after),
        serving_pod("fetched-since", "abc", 66, after, now_state="terminated"),  # the next try succeeded
    ]
    assert rebuild.failures(pods, "abc", RECORDED) == []
    retrying = serving_pod("retrying", "abc", 65, after, now_state="running")  # the next try runs now
    assert [f.pod for f in rebuild.failures([*pods, retrying], "abc", RECORDED)] == ["retrying"]


def test_a_record_without_recorded_at_takes_any_failure() -> None:
    assert len(rebuild.failures([serving_pod("p", "abc", 66, "2026-01-01T00:00:00Z")], "abc", "")) == 1


# ---------------------------------------------------------------- the decision


def test_no_failure_no_decision() -> None:
    assert rebuild.decide(_previous(), "abc", ARTIFACT, []) is None


def test_a_lost_copy_is_dropped_and_built_again_up_to_the_limit() -> None:
    pods = [serving_pod("p1", "abc", 66, "2026-12-02T12:00:07Z")]
    for done in range(rebuild.MAX_REBUILDS):
        state = rebuild.decide(_previous(done), "abc", ARTIFACT, pods)
        assert state is not None and state.rebuild and state.rebuilds == done + 1
        assert state.artifact is None and not state.failed and state.condition_status() is None
        assert state.reason == b.Reason.REBUILD and state.warning and state.new_result
        assert "pod p1" in state.message and "ArtifactNotBuilt" in state.message
        assert f"rebuild {done + 1} of at most {rebuild.MAX_REBUILDS}" in state.message


def test_past_the_limit_the_record_stays_and_the_condition_says_why_once() -> None:
    pods = [serving_pod("p1", "abc", 65, "2026-12-02T12:00:07Z")]
    state = rebuild.decide(_previous(rebuild.MAX_REBUILDS), "abc", ARTIFACT, pods)
    assert state is not None and not state.rebuild and state.rebuilds == rebuild.MAX_REBUILDS
    assert state.artifact == ARTIFACT and not state.failed  # never a failed revision
    assert state.reason == b.Reason.REBUILD_LIMIT and state.condition_status() is False and state.new_result
    assert "ArtifactCorrupt" in state.message and "check the artifact store" in state.message
    again = rebuild.decide(_previous(rebuild.MAX_REBUILDS, reason=b.Reason.REBUILD_LIMIT), "abc", ARTIFACT, pods)
    assert again is not None and not again.new_result  # one Warning, the condition meanwhile


def test_rebuilds_are_read_from_status() -> None:
    assert rebuild.rebuilds(_previous(2), "abc") == 2
    assert rebuild.rebuilds(_previous(), "abc") == 0 and rebuild.rebuilds(_previous(2), "xyz") == 0


# ---------------------------------------------------------------- whole passes, in-memory API


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, seconds: float = 10) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    tick = Clock()
    monkeypatch.setattr(reconciler_module, "_now", tick)
    yield tick


def _finish_build(kube: MemoryKube, at: dt.datetime) -> None:
    """The Job's pod printed its result; the Job completed."""
    (job,) = kube.of("Job")
    name = job["metadata"]["name"]
    kube.objects[("Pod", NS, f"{name}-x")] = {
        "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": NS, "labels": {"job-name": name},
                                    "creationTimestamp": _ts(at)},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": {
            "exitCode": 0, "message": json.dumps(BUILT), "reason": "Completed"}}}]}}
    job["spec"]["selector"] = {"matchLabels": {"job-name": name}}
    job["status"] = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": _ts(at)}],
                     "succeeded": 1}


def _entry(kube: MemoryKube) -> Mapping[str, Any]:
    (entry,) = _md(kube)["status"]["revisions"]
    return entry


def _events(kube: MemoryKube, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.of("Event") if e["reason"] == reason]


def _fail_fetch(kube: MemoryKube, revision: str, code: int, at: dt.datetime) -> None:
    kube.objects[("Pod", NS, "digits-pod-1")] = serving_pod("digits-pod-1", revision, code, _ts(at))


def _built(clock: Clock) -> tuple[MemoryKube, Reconciler, str]:
    """A ModelDeployment whose revision was built and recorded: (the API, the reconciler, the revision)."""
    kube, rec = _world()
    rec.reconcile(NS, "digits")
    _finish_build(kube, clock.now)
    clock.tick()
    rec.reconcile(NS, "digits")
    return kube, rec, _entry(kube)["revision"]


def test_a_copy_the_store_lost_is_rebuilt_and_then_fetched(clock: Clock) -> None:
    kube, rec, revision = _built(clock)
    assert _entry(kube)["artifact"]["recordedAt"] == _ts(clock.now)
    (dep,) = kube.of("Deployment")

    _fail_fetch(kube, revision, 66, clock.tick(5))  # the store lost it
    clock.tick()
    rec.reconcile(NS, "digits")
    entry = _entry(kube)
    assert "artifact" not in entry and entry[rebuild.FIELD] == 1
    assert kube.of("Job") == []  # the finished Job would report the old result again: deleted
    md = _md(kube)
    cond = _cond(md, "ArtifactReady")
    assert cond["status"] == "Unknown" and cond["reason"] == "ArtifactRebuild"
    assert md["status"].get("failedRevision") is None and md["status"]["phase"] != "Failed"
    (event,) = _events(kube, "ArtifactRebuild")
    assert event["type"] == "Warning" and "digits-pod-1" in event["message"] and "ArtifactNotBuilt" in event["message"]
    assert [d["metadata"]["uid"] for d in kube.of("Deployment")] == [dep["metadata"]["uid"]]  # its pods wait, retry

    clock.tick()
    rec.reconcile(NS, "digits")
    (job,) = kube.of("Job")  # the same name, a new Job
    assert job["metadata"]["labels"][c.LABEL_REVISION] == revision and len(_events(kube, "BuildStarted")) == 2
    assert _entry(kube)[rebuild.FIELD] == 1  # kept while it builds
    cond = _cond(_md(kube), "ArtifactReady")  # and the condition still says why it builds again
    assert cond["status"] == "Unknown" and cond["reason"] == "ArtifactRebuild", cond
    assert job["metadata"]["name"] in cond["message"] and "rebuild 1 of at most 3" in cond["message"], cond
    _finish_build(kube, clock.now)
    clock.tick()
    rec.reconcile(NS, "digits")
    rec.reconcile(NS, "digits")  # the pod's failure is from before the new record: nothing more
    entry = _entry(kube)
    assert entry["artifact"]["key"] == KEY and entry[rebuild.FIELD] == 1 and len(kube.of("Job")) == 1
    assert _cond(_md(kube), "ArtifactReady")["status"] == "True" and len(_events(kube, "ArtifactRebuild")) == 1
    (init,) = kube.of("Deployment")[0]["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][-2:] == ["--key", KEY]  # the pods fetch the same key again


def test_a_store_that_keeps_losing_bytes_is_rebuilt_three_times_then_named(clock: Clock) -> None:
    kube, rec, revision = _built(clock)
    for n in range(1, rebuild.MAX_REBUILDS + 1):
        _fail_fetch(kube, revision, 65, clock.tick(5))
        clock.tick()
        rec.reconcile(NS, "digits")
        assert _entry(kube)[rebuild.FIELD] == n and kube.of("Job") == []
        clock.tick()
        rec.reconcile(NS, "digits")
        _finish_build(kube, clock.now)
        clock.tick()
        rec.reconcile(NS, "digits")
        assert "artifact" in _entry(kube)

    _fail_fetch(kube, revision, 65, clock.tick(5))
    for _ in range(3):
        clock.tick()
        rec.reconcile(NS, "digits")
    md = _md(kube)
    entry = _entry(kube)
    assert entry[rebuild.FIELD] == rebuild.MAX_REBUILDS and entry["artifact"]["key"] == KEY
    assert len(kube.of("Job")) == 1 and len(_events(kube, "BuildStarted")) == 1 + rebuild.MAX_REBUILDS
    cond = _cond(md, "ArtifactReady")
    assert cond["status"] == "False" and cond["reason"] == "RebuildLimitReached"
    assert "ArtifactCorrupt" in cond["message"]
    assert md["status"].get("failedRevision") is None and md["status"]["phase"] != "Failed"
    (limit,) = _events(kube, "RebuildLimitReached")
    assert limit["type"] == "Warning"
    assert len(kube.of("Deployment")) == 1  # the pods keep retrying: a repaired store serves again
