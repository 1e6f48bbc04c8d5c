"""Built revisions: the one build Job per revision, started and read here (the thin API layer).

With MD_ARTIFACT_STORE set, a revision's model is converted, quantized and gated once, by the Job
`<name>-build-<revision>` (resources/build_job.py), and serving pods only fetch the artifact by
key. The operator never reads the store or its credentials: the Job's pod gets them by
secretKeyRef and reports its result as one JSON line in its termination message, which
planning/build.py turns into a BuildState. Once the artifact is recorded in status, the Job is
never read again. Reads of the Job go to the API server, and only while a revision builds.

No Job when another ModelDeployment (or another revision of this one) already records the key the
Job would compute (planning/reuse.py), nor while another one's unfinished Job builds that key (it
waits, and reuses that record once it is there), and a new one when serving pods find the recorded copy gone
or corrupt in the store (planning/rebuild.py, bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from . import api
from .config import Settings
from .kube import events
from .kube.client import Conflict, Forbidden, Kube, NotFound
from .planning import build, rebuild, reuse
from .planning.build import BuildState
from .resources.artifact_store import ArtifactStoreRef
from .resources.build_job import build_build_job, build_env, job_name
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
        self._starting = threading.Lock()  # looking for a build of the key under way, then starting one
        self._guard = threading.Lock()
        self._waiting: dict[tuple[str, str], tuple[str, str]] = {}  # waiter -> whose build it waits for

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
        if state.rebuilds or not count:
            return state
        return dataclasses.replace(state, rebuilds=count, **rebuild.while_rebuilding(state, count))

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
            return self._reuse_wait_or_start(md, spec, revision, previous, images, now, models, fenced, rebuilds)
        if not _owned_by(job, meta["uid"]):  # a deleted ModelDeployment's, left to the garbage collector
            return BuildState(build.Reason.BUILDING, f"revision {revision}: Job {name} belongs to another owner; "
                                                      "waiting for it to go")
        job_pods: list[dict[str, Any]] = []
        if _has_run(job):
            selector = ((job.get("spec") or {}).get("selector") or {}).get("matchLabels") or {"job-name": name}
            job_pods = self.kube.list("Pod", namespace, selector)
        state = build.from_job(revision, job, job_pods, now)
        if state.artifact is not None and state.new_result:  # where it was built: reuse stays in that store
            state = dataclasses.replace(state, artifact={**state.artifact, "store": self.store().uri})
        if state.replace_job:
            log.info("%s/%s: build Job %s gave up on transient trouble; replacing it", namespace, meta["name"], name)
            self._delete_job(job)
        return state

    def _reuse_wait_or_start(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, revision: str,
                             previous: Mapping[str, Any], images: Images, now: dt.datetime,
                             models: Callable[[], Iterable[Mapping[str, Any]]], fenced: Callable[[], bool],
                             rebuilds: int) -> BuildState:
        """No Job of the revision yet: reuse a record of its key, else wait for another revision's
        unfinished build of the key, else start the Job. Looking for a build under way and starting
        one happen under one lock, so two passes of the same key (two ModelDeployments created at
        the same moment) start one Job: the second pass finds the first's."""
        meta = md["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = reuse.job_key(build_env(namespace, spec, images, self.store()),  # the Job's container env
                            custom_image=bool(spec.serving.loader_image))
        new_job = build_build_job(name, namespace, meta["uid"], spec, revision, images, self.store(),
                                  key_labels=reuse.key_labels(key))
        if not rebuilds:  # after a rebuild, other records of the key may describe the same lost copy
            source = reuse.find(key, reuse.records(models()), namespace, name, self.store().uri)
            if source is not None:
                self._stop_waiting(namespace, name)
                return reuse.reused(revision, source, now)
        with self._starting:
            if not rebuilds and reuse.key_labels(key):
                told = next((str(c.get("reason", "")) for c in previous.get("conditions") or ()
                             if c.get("type") == build.CONDITION), "")
                waiting = reuse.wait_for(key, self._jobs_of(key), revision=revision, namespace=namespace,
                                         name=name, now=now, told=told, store=self.store().uri)
                if waiting is not None:
                    with self._guard:
                        if waiting.awaits is not None:
                            self._waiting[(namespace, name)] = waiting.awaits
                    return waiting
            self._stop_waiting(namespace, name)
            if not fenced():
                return BuildState(build.Reason.BUILDING, f"revision {revision}: waiting for NetworkPolicy "
                                                          f"{build_policy_name(name)} before the build Job "
                                                          f"{new_job['metadata']['name']} starts")
            return self._start(md, new_job, revision)

    def _jobs_of(self, key: str | None) -> list[dict[str, Any]]:
        """The build Jobs labelled with `key` in every watched namespace (API reads: Jobs are not
        cached; only when a Job would start). A namespace that refuses the LIST shows none."""
        out: list[dict[str, Any]] = []
        for namespace in list(self.settings.namespaces) or [None]:
            with contextlib.suppress(Forbidden, NotFound):
                out.extend(self.kube.list("Job", namespace, reuse.key_labels(key)))
        return out

    def _stop_waiting(self, namespace: str, name: str) -> None:
        with self._guard:
            self._waiting.pop((namespace, name), None)

    def waiters_of(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """The ModelDeployments waiting for the build of `namespace/name` (their next pass reuses its
        record, or starts their own Job if it failed); forgotten once returned."""
        with self._guard:
            found = [waiter for waiter, awaited in self._waiting.items() if awaited == (namespace, name)]
            for waiter in found:
                del self._waiting[waiter]
        return found

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
