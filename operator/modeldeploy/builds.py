"""Built revisions: the one build Job per revision, started and read here (the thin API layer).

With MD_ARTIFACT_STORE set, a revision's model is converted, quantized and gated once, by the Job
`<name>-build-<revision>` (resources/build_job.py), and serving pods only fetch the artifact by
key. The operator never reads the store or its credentials: the Job's pod gets them by
secretKeyRef and reports its result as one JSON line in its termination message, which
planning/build.py turns into a BuildState. Once the artifact is recorded in status, the Job is
never read again. Reads of the Job go to the API server, and only while a revision builds.

No Job when another ModelDeployment (or another revision of this one) already records the key the
Job would compute (planning/reuse.py), and a new one when serving pods find the recorded copy gone
or corrupt in the store (planning/rebuild.py, bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from . import api
from .config import Settings
from .kube import events
from .kube.client import Conflict, Kube, NotFound
from .planning import build, rebuild, reuse
from .planning.build import BuildState
from .resources.artifact_store import ArtifactStoreRef
from .resources.build_job import build_build_job, job_name
from .resources.deployment import Images
from .resources.networkpolicy import build_policy_name

log = logging.getLogger(__name__)

REASON_STARTED: Final = "BuildStarted"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _deleting(job: Mapping[str, Any]) -> bool:
    return bool((job.get("metadata") or {}).get("deletionTimestamp"))


def _has_run(job: Mapping[str, Any]) -> bool:
    """Whether any pod of the Job has finished (only then are its pods worth a LIST)."""
    st = job.get("status") or {}
    return bool(st.get("failed") or st.get("succeeded") or st.get("conditions"))


class Builder:
    """Starts a revision's build Job and reads its outcome."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.artifacts_enabled

    def store(self) -> ArtifactStoreRef:
        s = self.settings
        return ArtifactStoreRef(uri=s.artifact_store, secret=s.artifact_store_secret,
                                endpoint=s.artifact_store_endpoint)

    def observe(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, revision: str,
                previous: Mapping[str, Any], images: Images, now: dt.datetime,
                pods: Iterable[Mapping[str, Any]] = (),
                models: Callable[[], Iterable[Mapping[str, Any]]] = tuple,
                fenced: Callable[[], bool] = lambda: True) -> BuildState:
        """The revision's build: as recorded in status (dropped when its pods found the stored copy
        gone or corrupt), else reused from a record of the same key, else from its Job (created when
        missing). `pods`: the ModelDeployment's pods; `models`: every ModelDeployment known (read
        only when a Job would start); `fenced`: whether the build pods' NetworkPolicy is in place
        (asked only when a Job would start: a pod holding the store's credentials and converting a
        user's model never runs before its policy exists)."""
        count = rebuild.rebuilds(previous, revision)
        state = self._observe(md, spec, revision, previous, images, now, pods, models, fenced, count)
        return state if state.rebuilds or not count else dataclasses.replace(state, rebuilds=count)

    def _observe(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, revision: str,
                 previous: Mapping[str, Any], images: Images, now: dt.datetime,
                 pods: Iterable[Mapping[str, Any]], models: Callable[[], Iterable[Mapping[str, Any]]],
                 fenced: Callable[[], bool], rebuilds: int) -> BuildState:
        meta = md["metadata"]
        namespace = meta["namespace"]
        name = job_name(meta["name"], revision)
        if (done := build.recorded(previous, revision)) is not None:
            if done.artifact is None:
                return done
            verdict = rebuild.decide(previous, revision, done.artifact, pods)
            if verdict is None or not verdict.rebuild:
                return verdict or done
            # the finished Job would report the old result again: it goes, the next pass starts a new one
            log.info("%s/%s: %s", namespace, meta["name"], verdict.message)
            self._remove_job(namespace, name, meta["uid"])
            return verdict
        job = self.kube.get_or_none("Job", namespace, name)
        if job is not None and _deleting(job):
            return BuildState(build.Reason.BUILD_RETRYING, f"revision {revision}: waiting for the old build Job "
                                                            f"{name} to go before a new one starts")
        if job is None:
            new_job = build_build_job(meta["name"], namespace, meta["uid"], spec, revision, images, self.store())
            if not rebuilds:  # after a rebuild, other records of the key may describe the same lost copy
                env = new_job["spec"]["template"]["spec"]["containers"][0]["env"]
                found = reuse.decide(env, custom_image=bool(spec.serving.loader_image), revision=revision,
                                     namespace=namespace, name=meta["name"], models=models(), now=now)
                if found is not None:
                    return found
            if not fenced():
                return BuildState(build.Reason.BUILDING, f"revision {revision}: waiting for NetworkPolicy "
                                                          f"{build_policy_name(meta['name'])} before the build Job "
                                                          f"{name} starts")
            return self._start(md, new_job, revision)
        if not _owned_by(job, meta["uid"]):  # a deleted ModelDeployment's, left to the garbage collector
            return BuildState(build.Reason.BUILDING, f"revision {revision}: Job {name} belongs to another owner; "
                                                      "waiting for it to go")
        job_pods: list[dict[str, Any]] = []
        if _has_run(job):
            selector = ((job.get("spec") or {}).get("selector") or {}).get("matchLabels") or {"job-name": name}
            job_pods = self.kube.list("Pod", namespace, selector)
        state = build.from_job(revision, job, job_pods, now)
        if state.replace_job:
            log.info("%s/%s: build Job %s gave up on transient trouble; replacing it", namespace, meta["name"], name)
            self._delete_job(job)
        return state

    def _remove_job(self, namespace: str, name: str, owner_uid: str) -> None:
        """Delete the revision's finished build Job, if it is still there (its TTL may have taken it)."""
        job = self.kube.get_or_none("Job", namespace, name)
        if job is not None and _owned_by(job, owner_uid) and not _deleting(job):
            self._delete_job(job)

    def _delete_job(self, job: Mapping[str, Any]) -> None:
        """Delete exactly this Job (uid precondition); its pods go with it."""
        meta = job["metadata"]
        with contextlib.suppress(Conflict, NotFound):  # gone or replaced meanwhile: the next pass sees it
            self.kube.delete("Job", meta["namespace"], meta["name"], uid=meta.get("uid"))

    def _start(self, md: Mapping[str, Any], job: dict[str, Any], revision: str) -> BuildState:
        meta = md["metadata"]
        name = job["metadata"]["name"]
        try:
            self.kube.create(job)
        except Conflict:  # created meanwhile (another pass): the next pass reads it
            return build.starting(revision, name)
        log.info("%s/%s: started build Job %s", meta["namespace"], meta["name"], name)
        events.post(self.kube, md, "Normal", REASON_STARTED, f"revision {revision}: build Job {name} started")
        return build.starting(revision, name)
