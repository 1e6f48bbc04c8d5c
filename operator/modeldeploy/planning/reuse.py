"""Reuse a built artifact without a Job: the same key recorded by any ModelDeployment (pure).

The build Job computes its key from its own environment (artifact/cli.py `_build`:
artifact/options.build_options, then artifact_key with MD_ARTIFACT_SCOPE and MD_ARTIFACT_DEVICE).
The operator writes that environment (resources/build_job.build_env), so it computes the same key
here, with the same functions, from the same values, and looks for it among the artifacts that
ModelDeployments already record in status.revisions[].artifact (its own other revisions included).
A record is trusted without looking at the store: the operator has no credentials for it, and a
copy the store lost or corrupted is rebuilt when a pod says so (planning/rebuild.py).

The key is not computed (the Job runs as before) when it could depend on something only the
Job's pod sees:
- a custom loader image (spec.serving.loaderImage): the key includes the builder's version
  (modeldeploy.__version__), and the operator knows only its own; the chart's images are the
  operator's release (docs/artifacts.md, "Use the image of the operator's version");
- a key input taken from a Secret (an MD_* variable by valueFrom);
- settings the builder would refuse (it fails with its own message, as before).
Without a declared sha256 the key names the source by URI, version label and scope (namespace and
credentials Secret), exactly as the Job would: reuse then happens within that scope only.

No record yet, but a build of the key under way: every build Job carries its key as the label
`modeldeploy.io/artifact-key`. When another ModelDeployment has an unfinished Job of the same key,
no second Job starts: the revision waits (ArtifactReady=False/WaitingForBuild, naming that build)
and reuses its record once it is there. A Job that never had a pod Ready, succeed or fail within
STALLED_AFTER_SECONDS of its creation (unschedulable where its owner asked, an image that cannot
be pulled) is not waited for: the waiter builds itself rather than wait out that Job's deadline.
Two ModelDeployments of the same model created at the same moment are built once.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import constants, timefmt
from ..artifact.key import artifact_key
from ..artifact.options import build_options
from ..loader.errors import LoaderError
from .build import RETRY_AFTER_SECONDS, BuildState, Reason, age

_SECRET_FREE_PREFIXES: Final = ("MD_STORE_",)  # the store's credentials: not inputs of the key
STALLED_AFTER_SECONDS: Final = 900.0  # longer than a GPU node's provisioning or a converter image's pull
_LABEL_VALUE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Recorded:
    """An artifact a ModelDeployment records for one of its revisions."""

    namespace: str
    name: str
    revision: str
    artifact: Mapping[str, Any]

    @property
    def owner(self) -> str:
        return f"{self.namespace}/{self.name}"


def job_key(env: Iterable[Mapping[str, Any]], *, custom_image: bool = False) -> str | None:
    """The key the build Job with this container environment computes, or None when the operator
    cannot know it (see the module docstring)."""
    if custom_image:
        return None
    values: dict[str, str] = {}
    for var in env:
        name = str(var.get("name", ""))
        if "value" in var:
            values[name] = str(var["value"])
        elif name.startswith("MD_") and not name.startswith(_SECRET_FREE_PREFIXES):
            return None  # a key input only the pod sees
    try:
        opts, settings = build_options([], values, need_store=False)  # what artifact/cli.py `_build` does
        return artifact_key(settings, scope=opts.scope, device=opts.device, hardware=opts.hardware)
    except LoaderError:
        return None


def records(models: Iterable[Mapping[str, Any]]) -> list[Recorded]:
    """Every artifact recorded in the status of these ModelDeployments, in a stable order."""
    out = []
    for md in models:
        meta = md.get("metadata") or {}
        for entry in (md.get("status") or {}).get("revisions") or ():
            artifact = entry.get("artifact")
            if isinstance(artifact, Mapping) and artifact.get("key"):
                out.append(Recorded(str(meta.get("namespace", "")), str(meta.get("name", "")),
                                    str(entry.get("revision", "")), artifact))
    return sorted(out, key=lambda r: (r.namespace, r.name, r.revision))


def same_store(store: str, namespace: str, other_store: str, other_namespace: str) -> bool:
    """Whether an artifact recorded in `other_store` from `other_namespace` is in the store this
    revision's pods read: the same configured store (the chart's `artifacts.store` may change; a
    record without one predates recording it), and for a `pvc://` claim the same namespace (a claim
    of that name in another namespace is another volume)."""
    return bool(store) and other_store == store and (not store.startswith("pvc://") or other_namespace == namespace)


def find(key: str | None, known: Iterable[Recorded], namespace: str, name: str, store: str) -> Recorded | None:
    """A record of `key` in `store`: this ModelDeployment's own first, then the first by namespace and name."""
    if not key:
        return None
    found = [r for r in known if r.artifact.get("key") == key
             and same_store(store, namespace, str(r.artifact.get("store", "")), r.namespace)]
    own = [r for r in found if (r.namespace, r.name) == (namespace, name)]
    return next(iter(own or found), None)


def reused(revision: str, source: Recorded, now: dt.datetime) -> BuildState:
    """The revision's build: `source`'s artifact, recorded as reused (nothing converted, no Job)."""
    artifact = {k: v for k, v in source.artifact.items() if k not in ("recordedAt", "reusedFrom")}
    artifact.update(reused=True, reusedFrom=f"{source.owner} revision {source.revision}",
                    recordedAt=timefmt.rfc3339_at(now))
    sha = str(artifact.get("modelSha256", ""))[:12]
    return BuildState(Reason.REUSED, f"revision {revision}: artifact {artifact['key']} reused from the build of "
                                     f"ModelDeployment {source.owner} (revision {source.revision}, model sha256 "
                                     f"{sha}…); no build Job", artifact=artifact, new_result=True)


def decide(env: Iterable[Mapping[str, Any]], *, custom_image: bool, revision: str, namespace: str, name: str,
           models: Iterable[Mapping[str, Any]], now: dt.datetime, store: str) -> BuildState | None:
    """The revision's build reused from a known record, or None: start the Job as before."""
    source = find(job_key(env, custom_image=custom_image), records(models), namespace, name, store)
    return None if source is None else reused(revision, source, now)


# ---------------------------------------------------------------- a build of the key under way


@dataclass(frozen=True)
class InFlight:
    """An unfinished build Job of a key, and the ModelDeployment revision it builds for."""

    namespace: str
    name: str
    revision: str
    job: str
    created: str

    @property
    def owner(self) -> str:
        return f"{self.namespace}/{self.name}"


def key_labels(key: str | None) -> dict[str, str]:
    """The label a build Job of `key` carries; none when the key is unknown or not a label value."""
    return {constants.LABEL_ARTIFACT_KEY: key} if key and _LABEL_VALUE.match(key) else {}


def _done(job: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether the Job is over for a waiter: failed, or complete long enough ago that its owner has
    recorded the result (a pass reads a finished Job at once; meanwhile the record is on its way)."""
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Failed":
            return True
        if cond.get("type") == "Complete":
            return age(cond, now) >= RETRY_AFTER_SECONDS
    return False


def _stalled(job: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether the Job never got going: created long ago, and not one of its pods was ever Ready,
    succeeded or failed (a retrying Job has failures; a running build has a Ready pod)."""
    status = job.get("status") or {}
    if any(status.get(k) for k in ("ready", "succeeded", "failed")):
        return False
    created = timefmt.parse_rfc3339((job.get("metadata") or {}).get("creationTimestamp"))
    return created is not None and now.timestamp() - created >= STALLED_AFTER_SECONDS


def _owned_by_a_model(job: Mapping[str, Any]) -> bool:
    return any(ref.get("kind") == constants.KIND and ref.get("controller")
               for ref in (job.get("metadata") or {}).get("ownerReferences") or ())


def in_flight(jobs: Iterable[Mapping[str, Any]], key: str | None, now: dt.datetime) -> list[InFlight]:
    """The build Jobs of `key` still running (or retrying, or just complete: their record is on its
    way), oldest first: labelled with the key, controlled by a ModelDeployment, not failed, not
    stalled, not being deleted."""
    if not key_labels(key):
        return []
    out = []
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(constants.LABEL_ARTIFACT_KEY) != key or meta.get("deletionTimestamp") or _done(job, now) \
                or _stalled(job, now):
            continue
        if not _owned_by_a_model(job):
            continue
        out.append(InFlight(str(meta.get("namespace", "")), str(labels.get(constants.LABEL_NAME, "")),
                            str(labels.get(constants.LABEL_REVISION, "")), str(meta.get("name", "")),
                            str(meta.get("creationTimestamp") or "")))
    return sorted(out, key=lambda f: (f.created, f.namespace, f.name, f.revision))


def wait_for(key: str | None, jobs: Iterable[Mapping[str, Any]], *, revision: str, namespace: str, name: str,
             now: dt.datetime, told: str = "", store: str = "") -> BuildState | None:
    """WaitingForBuild when another ModelDeployment's unfinished Job builds `key` (this revision starts
    no Job of its own), else None. Not for this ModelDeployment's other revisions: only the current
    revision's build is ever recorded, so an older revision's Job would leave nothing to reuse.
    `told`: the ArtifactReady reason status holds (one Event per wait); `store`: the operator's
    store (a `pvc://` claim's builds count only in this namespace)."""
    others = [f for f in in_flight(jobs, key, now) if (f.namespace, f.name) != (namespace, name)
              and (not store.startswith("pvc://") or f.namespace == namespace)]  # a claim is per namespace
    if not others:
        return None
    other = others[0]
    return BuildState(Reason.WAITING, f"revision {revision}: artifact {key} is being built by ModelDeployment "
                                      f"{other.owner} (revision {other.revision}, build Job {other.job}); waiting "
                                      "for its record instead of starting a second build",
                      new_result=told != Reason.WAITING, awaits=(other.namespace, other.name))
