"""A pass that keeps losing its status race to another writer still records its decision.

Another controller patching the same ModelDeployment's status many times a second (a disjoint
field) makes every pass's precondition fail when the pass spends its time re-reading children.
The retries re-read only the ModelDeployment (kube/replay.py): the decision lands within a few
attempts, and the children and metrics are read from the API server once per pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from modeldeploy import constants as c
from modeldeploy.config import Settings
from modeldeploy.kube.client import Conflict
from modeldeploy.kube.replay import ReplayReader
from modeldeploy.reconciler import CONFLICT_RETRIES, Reconciler
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
from tests.unit.test_built_revisions import MemoryKube

NS = "ml"
SPEC = apply_patch(BASE_SPEC, {"autoscaling": {"enabled": False}, "replicas": 2})


class RacingKube(MemoryKube):
    """Another writer's status patch lands while the pass reads anything but its ModelDeployment."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.racing = False

    def _race(self, kind: str) -> None:
        self.reads[kind] += 1
        if self.racing and kind != c.KIND:
            md = self.objects[(c.KIND, NS, "digits")]
            md.setdefault("status", {})["autoscaling"] = {"reason": f"second writer {self.version}"}
            self._bump(md)

    def get_or_none(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._race(kind)
        return super().get_or_none(kind, namespace, name)

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        self._race(kind)
        return super().list(kind, namespace, labels)


def _world() -> tuple[RacingKube, Reconciler]:
    kube = RacingKube()
    kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "digits", "namespace": NS,
                                                                           "generation": 1}, "spec": SPEC})
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    return kube, rec


def _reads_of_one_pass() -> Counter[str]:
    kube, rec = _world()
    rec._pass_with_retries(NS, "digits")
    assert kube.reads[c.KIND] == 1
    return kube.reads


def test_a_decision_lands_while_another_writer_races_every_read() -> None:
    one = _reads_of_one_pass()
    kube, rec = _world()
    kube.racing = True
    rec._pass_with_retries(NS, "digits")
    md = kube.objects[(c.KIND, NS, "digits")]
    assert md["status"]["observedGeneration"] == 1 and md["status"]["autoscaling"]["reason"].startswith("second")
    (dep,) = kube.of("Deployment")
    assert dep["spec"]["replicas"] == 2
    # three attempts: the first one and the first retry read the children (and lose), the second
    # retry re-reads only the ModelDeployment and wins
    assert kube.reads[c.KIND] == 3 < CONFLICT_RETRIES
    assert {k: n for k, n in kube.reads.items() if k != c.KIND} == {k: 2 * n for k, n in one.items() if k != c.KIND}


def test_replay_answers_the_same_question_once() -> None:
    kube, _ = _world()
    replay = ReplayReader(kube)
    first = replay.list("Pod", NS, {c.LABEL_NAME: "digits"})
    kube.objects[("Pod", NS, "p")] = {"kind": "Pod", "metadata": {"name": "p", "namespace": NS,
                                                                  "labels": {c.LABEL_NAME: "digits"}}}
    assert replay.list("Pod", NS, {c.LABEL_NAME: "digits"}) == first == []
    assert len(replay.list("Pod", NS, {c.LABEL_NAME: "other"})) == 0
    assert kube.reads["Pod"] == 2
    assert replay.get_or_none("Pod", NS, "p") is not None and replay.get_or_none("Pod", NS, "p") is not None
    assert kube.reads["Pod"] == 3


class FlakyKube(RacingKube):
    """The first status patch loses its race; the first Service apply is refused (a 409 after the
    pass already applied its Deployment)."""

    def __init__(self) -> None:
        super().__init__()
        self.status_refusals, self.service_refusals = 1, 1
        self.applied: Counter[str] = Counter()

    def patch_status(self, kind: str, namespace: str, name: str, st: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        if self.status_refusals:
            self.status_refusals -= 1
            raise Conflict(name)
        return super().patch_status(kind, namespace, name, st, resource_version)

    def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.applied[obj["kind"]] += 1
        if obj["kind"] == "Service" and self.service_refusals:
            self.service_refusals -= 1
            raise Conflict(obj["metadata"]["name"])
        return super().apply(obj, force=force)


def test_a_retry_after_an_attempt_that_wrote_reads_afresh() -> None:
    kube = FlakyKube()
    kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": "digits", "namespace": NS,
                                                                           "generation": 1}, "spec": SPEC})
    rec = Reconciler(kube, Settings())  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    rec._pass_with_retries(NS, "digits")
    assert kube.reads[c.KIND] == 3  # lost the status race, then a 409 after applying the Deployment, then done
    assert len(kube.of("Deployment")) == 1 and len(kube.of("Service")) == 3
    # the third attempt read the Deployment the second one applied: it is not applied again
    assert kube.applied["Deployment"] == 1, kube.applied
    assert kube.reads["Deployment"] == 3 * _reads_of_one_pass()["Deployment"]
