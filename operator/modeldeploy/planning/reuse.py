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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import timefmt
from ..artifact.key import artifact_key
from ..artifact.options import build_options
from ..loader.errors import LoaderError
from .build import BuildState, Reason

_SECRET_FREE_PREFIXES: Final = ("MD_STORE_",)  # the store's credentials: not inputs of the key


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
        return artifact_key(settings, scope=opts.scope, device=opts.device)
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


def find(key: str | None, known: Iterable[Recorded], namespace: str, name: str) -> Recorded | None:
    """A record of `key`: this ModelDeployment's own first, then the first by namespace and name."""
    if not key:
        return None
    found = [r for r in known if r.artifact.get("key") == key]
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
           models: Iterable[Mapping[str, Any]], now: dt.datetime) -> BuildState | None:
    """The revision's build reused from a known record, or None: start the Job as before."""
    source = find(job_key(env, custom_image=custom_image), records(models), namespace, name)
    return None if source is None else reused(revision, source, now)
