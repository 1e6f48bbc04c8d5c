"""An artifact that already exists is reused: no Job (issue 14). The operator computes the key the
build Job would compute, from the Job's own environment, and reuses any ModelDeployment's record of
it; whole passes against the in-memory API of test_built_revisions."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy import api
from modeldeploy import constants as c
from modeldeploy.artifact import cli
from modeldeploy.config import Settings
from modeldeploy.kube.cache import WatchCache
from modeldeploy.planning import build as b
from modeldeploy.planning import reuse
from modeldeploy.reconciler import Reconciler
from modeldeploy.resources.artifact_store import ArtifactStoreRef
from modeldeploy.resources.build_job import build_env
from modeldeploy.resources.deployment import Images
from tests.integration.invalid_specs import BASE_SPEC, apply_patch
from tests.unit.test_built_revisions import BUILT, SHA, MemoryKube

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
SPEC = apply_patch(BASE_SPEC, {"autoscaling": {"enabled": False}, "replicas": 1,
                               "model": {"source": {"sha256": SHA}}})
IMAGES = Images(serving="triton:x", loader="loader:x", converter="converter:x")
STORE = ArtifactStoreRef(uri="s3://artifacts", secret="s3-creds")


def _env(namespace: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return build_env(namespace, api.parse_spec(copy.deepcopy(dict(spec)), name="digits"), IMAGES, STORE)


def _cli_key(env: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> str:
    """What `python -m modeldeploy.artifact key` says for this environment (the Job's own code)."""
    values = {v["name"]: v["value"] for v in env if "value" in v}
    capsys.readouterr()
    assert cli.main(["key"], values) == 0
    return str(json.loads(capsys.readouterr().out)["key"])


# ---------------------------------------------------------------- the key, as the Job computes it


def test_the_operator_computes_the_key_the_job_computes(capsys: pytest.CaptureFixture[str]) -> None:
    env = _env("ml", SPEC)
    key = reuse.job_key(env)
    assert key is not None and key == _cli_key(env, capsys)
    assert reuse.job_key(_env("team-b", SPEC)) == key  # a declared sha256: the namespace is not in it


@pytest.mark.parametrize("patch", [
    {"model": {"source": {"sha256": "0" * 64}}},
    {"model": {"optimization": {"quantize": "int8"}}},
    {"model": {"version": "4"}},
    {"model": {"maxBatchSize": 64}},
])
def test_anything_that_changes_the_bytes_changes_the_key(patch: dict[str, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    env = _env("ml", apply_patch(SPEC, patch))
    assert reuse.job_key(env) not in (None, reuse.job_key(_env("ml", SPEC)))
    assert reuse.job_key(env) == _cli_key(env, capsys)


def test_without_a_sha256_the_key_names_the_namespace_as_the_job_does(capsys: pytest.CaptureFixture[str]) -> None:
    plain = apply_patch(SPEC, {"model": {"source": {"sha256": None}}})
    here, there = _env("ml", plain), _env("team-b", plain)
    assert reuse.job_key(here) == _cli_key(here, capsys) and reuse.job_key(there) == _cli_key(there, capsys)
    assert reuse.job_key(here) != reuse.job_key(there)


def test_no_key_when_the_operator_cannot_know_it() -> None:
    env = _env("ml", SPEC)
    assert reuse.job_key(env, custom_image=True) is None  # the key has the builder's version in it
    secret = {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    assert reuse.job_key([*env, {"name": "MD_QUANTIZE", **secret}]) is None
    assert reuse.job_key([*env, {"name": "MD_STORE_AWS_ACCESS_KEY_ID", **secret}]) is not None  # the store's
    assert reuse.job_key([v for v in env if v["name"] != "MD_SOURCE_URI"]) is None  # the builder refuses it


# ---------------------------------------------------------------- which record, and what is recorded


def _model(namespace: str, name: str, *entries: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "status": {"revisions": [
        {"name": f"{name}-{rev}", "revision": rev, **({"artifact": {**BUILT_RECORD, "key": key}} if key else {})}
        for rev, key in entries]}}


BUILT_RECORD = {"key": "k", "modelSha256": SHA, "quantized": False, "reused": False, "buildSeconds": 3.0,
                "builtAt": "2026-12-01T00:00:00Z", "recordedAt": "2026-12-01T00:00:05Z", "store": STORE.uri}


def test_a_record_of_the_key_is_found_own_first_then_by_namespace_and_name() -> None:
    models = [_model("zeta", "a", ("r1", "k1")), _model("alpha", "b", ("r2", "k1"), ("r3", "")),
              _model("ml", "digits", ("r0", "k1"), ("r9", "k2"))]
    known = reuse.records(models)
    own = reuse.find("k1", known, "ml", "digits", STORE.uri)
    assert own is not None and (own.owner, own.revision) == ("ml/digits", "r0")
    other = reuse.find("k1", known, "ml", "new", STORE.uri)
    assert other is not None and (other.owner, other.revision) == ("alpha/b", "r2")
    assert reuse.find("k3", known, "ml", "new", STORE.uri) is None
    assert reuse.find(None, known, "ml", "new", STORE.uri) is None


def test_only_records_of_the_store_the_pods_read_are_reused() -> None:
    """A record made in another store (the chart's artifacts.store changed), or before the store was
    recorded, is not in this one; a claim of the same name in another namespace is another volume."""
    known = reuse.records([_model("alpha", "b", ("r2", "k1"))])
    assert reuse.find("k1", known, "ml", "new", "s3://artifacts/other") is None
    unrecorded = reuse.records([{"metadata": {"namespace": "alpha", "name": "b"}, "status": {"revisions": [
        {"revision": "r2", "artifact": {k: v for k, v in {**BUILT_RECORD, "key": "k1"}.items() if k != "store"}}]}}])
    assert reuse.find("k1", unrecorded, "ml", "new", STORE.uri) is None
    claim = reuse.records([_model("alpha", "b", ("r2", "k1"))])
    claim = [reuse.Recorded(r.namespace, r.name, r.revision, {**r.artifact, "store": "pvc://models"}) for r in claim]
    assert reuse.find("k1", claim, "ml", "new", "pvc://models") is None  # alpha's claim, not ml's
    assert reuse.find("k1", claim, "alpha", "new", "pvc://models") is not None


def test_a_reused_record_is_a_copy_marked_reused_with_its_origin() -> None:
    (source,) = reuse.records([_model("team-a", "digits", ("r1", "k1"))])
    state = reuse.reused("r7", source, NOW)
    assert state.reason == b.Reason.REUSED and state.ready and state.new_result and state.condition_status()
    assert state.artifact == {**BUILT_RECORD, "key": "k1", "reused": True, "reusedFrom": "team-a/digits revision r1",
                              "recordedAt": "2026-12-02T12:00:00Z"}
    assert "team-a/digits" in state.message and "no build Job" in state.message


def test_decide_reuses_only_a_recorded_key() -> None:
    env = _env("ml", SPEC)
    key = reuse.job_key(env)
    assert key is not None
    models = [_model("team-a", "digits", ("r1", key))]
    found = reuse.decide(env, custom_image=False, revision="r2", namespace="ml", name="digits", models=models, now=NOW,
                          store=STORE.uri)
    assert found is not None and found.artifact is not None and found.artifact["key"] == key
    assert reuse.decide(env, custom_image=True, revision="r2", namespace="ml", name="digits", models=models,
                        now=NOW, store=STORE.uri) is None
    assert reuse.decide(env, custom_image=False, revision="r2", namespace="ml", name="digits",
                        models=[_model("team-a", "digits", ("r1", "other-key"))], now=NOW, store=STORE.uri) is None


# ---------------------------------------------------------------- whole passes, in-memory API


class AllNamespaces(MemoryKube):
    """MemoryKube whose list(kind, None) lists every namespace, as the API server does."""

    def list(self, kind: str, namespace: str | None, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        if namespace is not None:
            return super().list(kind, namespace, labels)
        namespaces = sorted({ns for (k, ns, _) in self.objects if k == kind})
        return [o for ns in namespaces for o in MemoryKube.list(self, kind, ns, labels)]


def _add(kube: MemoryKube, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    kube.create({"apiVersion": c.API_VERSION, "kind": c.KIND,
                 "metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": copy.deepcopy(spec)})


def _world() -> tuple[AllNamespaces, Reconciler]:
    kube = AllNamespaces()
    _add(kube, "ml", "digits", SPEC)
    rec = Reconciler(kube, Settings(artifact_store="s3://artifacts", artifact_store_secret="s3-creds"))  # type: ignore[arg-type]
    rec.retry_failed_passes = False
    return kube, rec


def _jobs(kube: MemoryKube, namespace: str) -> list[dict[str, Any]]:
    return [j for j in kube.of("Job") if j["metadata"]["namespace"] == namespace]


def _status(kube: MemoryKube, namespace: str, name: str) -> dict[str, Any]:
    md = kube.get_or_none(c.KIND, namespace, name)
    assert md is not None
    return dict(md["status"])


def _cond(st: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    return next(x for x in st["conditions"] if x["type"] == ctype)


def _build_first(kube: MemoryKube, rec: Reconciler) -> str:
    """ml/digits builds; its Job reports the key it computes from its own environment."""
    rec.reconcile("ml", "digits")
    (job,) = _jobs(kube, "ml")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    key = reuse.job_key(env)
    assert key is not None
    name = job["metadata"]["name"]
    kube.objects[("Pod", "ml", f"{name}-x")] = {
        "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": "ml", "labels": {"job-name": name},
                                    "creationTimestamp": "2026-12-02T11:00:00Z"},
        "status": {"containerStatuses": [{"name": "build", "state": {"terminated": {
            "exitCode": 0, "message": json.dumps({**BUILT, "key": key}), "reason": "Completed"}}}]}}
    job["spec"]["selector"] = {"matchLabels": {"job-name": name}}
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    rec.reconcile("ml", "digits")
    assert _status(kube, "ml", "digits")["revisions"][0]["artifact"]["key"] == key
    return key


def test_the_same_model_in_another_namespace_gets_no_job_and_reuses_the_artifact() -> None:
    kube, rec = _world()
    key = _build_first(kube, rec)
    _add(kube, "team-b", "digits", SPEC)
    rec.reconcile("team-b", "digits")
    rec.reconcile("team-b", "digits")
    assert _jobs(kube, "team-b") == []
    st = _status(kube, "team-b", "digits")
    (entry,) = st["revisions"]
    assert entry["artifact"]["key"] == key and entry["artifact"]["reused"] is True
    assert entry["artifact"]["modelSha256"] == SHA and entry["artifact"]["reusedFrom"].startswith("ml/digits revision")
    assert _cond(st, "ArtifactReady")["status"] == "True" and _cond(st, "ArtifactReady")["reason"] == "Reused"
    (dep,) = [d for d in kube.of("Deployment") if d["metadata"]["namespace"] == "team-b"]
    assert dep["spec"]["template"]["spec"]["initContainers"][0]["command"][-2:] == ["--key", key]
    events = [e for e in kube.of("Event") if e["metadata"]["namespace"] == "team-b"]
    (reused,) = [e for e in events if e["reason"] == "Reused"]
    assert "ml/digits" in reused["message"] and reused["type"] == "Normal"
    assert not any(e["reason"] == "BuildStarted" for e in events)


@pytest.mark.parametrize("patch", [{"model": {"source": {"sha256": "ab" * 32}}},
                                   {"model": {"optimization": {"quantize": "int8"}}}],
                         ids=["other-sha256", "int8"])
def test_a_different_model_gets_its_own_job(patch: dict[str, Any]) -> None:
    kube, rec = _world()
    _build_first(kube, rec)
    _add(kube, "team-b", "digits", apply_patch(SPEC, patch))
    rec.reconcile("team-b", "digits")
    (job,) = _jobs(kube, "team-b")
    assert job["metadata"]["name"].startswith("digits-build-")
    st = _status(kube, "team-b", "digits")
    assert "artifact" not in st["revisions"][0] and _cond(st, "ArtifactReady")["reason"] == "Building"


def test_a_custom_loader_image_still_builds() -> None:
    kube, rec = _world()
    _build_first(kube, rec)
    _add(kube, "team-b", "digits", apply_patch(SPEC, {"serving": {"loaderImage": "example.com/loader:9"}}))
    rec.reconcile("team-b", "digits")
    assert len(_jobs(kube, "team-b")) == 1


def test_a_new_revision_with_the_same_key_reuses_its_own_build() -> None:
    kube, rec = _world()
    key = _build_first(kube, rec)
    md = kube.objects[(c.KIND, "ml", "digits")]
    md["spec"]["serving"]["resources"] = {"requests": {"cpu": "3", "memory": "8Gi"}}  # pods change, bytes do not
    md["metadata"]["generation"] = 2
    rec.reconcile("ml", "digits")
    st = _status(kube, "ml", "digits")
    assert len(_jobs(kube, "ml")) == 1 and len(st["revisions"]) == 2
    old, new = sorted(st["revisions"], key=lambda r: r["artifact"].get("reused", False))
    assert new["artifact"]["key"] == key and new["artifact"]["reusedFrom"] == f"ml/digits revision {old['revision']}"


def test_the_watch_cache_is_where_other_models_are_read() -> None:
    _, rec = _world()
    cache = WatchCache()
    rec.use_cache(cache)
    cache.replace(c.KIND, None, [{"kind": c.KIND, **_model("far", "away", ("r1", "k1"))}], None)
    cache.mark_synced(c.KIND)
    assert [m["metadata"]["name"] for m in rec.known_models()] == ["away"]
