"""The canary's validation gate: a Job sends the labelled dataset to the canary before live traffic.

The operator only creates the Job (resources/validation_job.py) and reads its outcome: the Job's
pod gets the model's credentialsSecret by reference and fetches the dataset itself, so the
operator never reads a Secret or a dataset. The verdict is the JSON line the pod leaves in its
termination message (modeldeploy.loader.validate); a Job that ends without one (deadline
exceeded, image never pulled) is a failed validation with the Job's own reason.
Finished Jobs go away by ttlSecondsAfterFinished, and with their ModelDeployment by ownerReference.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from . import api
from .config import Settings
from .kube import events
from .kube.client import Conflict, Kube, NotFound
from .planning import podstate
from .planning.termination import last_json_object
from .resources.deployment import Images
from .resources.validation_job import ANNOTATION_FINGERPRINT, CONTAINER, build_validation_job, fingerprint, job_name

log = logging.getLogger(__name__)

REASON_STARTED: Final = "ValidationStarted"
MAX_MESSAGE: Final = 1024


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The Job's terminal condition of this type when it is True (Complete or Failed)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def parse_result(message: str) -> dict[str, Any] | None:
    """The validate CLI's JSON line: the last line of the termination message that parses as one."""
    return last_json_object(message, "passed", bool)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def verdict_from_job(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> tuple[bool, str] | None:
    """(passed, message) once the Job is Complete or Failed, else None (still running or not started).

    The newest pod with a terminated validate container speaks for the Job; its JSON line wins.
    Without one, a Failed Job fails the gate with the Job's reason (DeadlineExceeded ...) and, if
    a pod never ran, why; a Complete Job without a result fails too: a pass must be stated.
    """
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    if complete is None and failed is None:
        return None
    pods = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    for pod in reversed(pods):
        term = podstate.terminated(pod, CONTAINER)
        if term is None:
            continue
        result = parse_result(term.get("message", ""))
        if result is not None:
            message = str(result.get("message") or ("passed" if result["passed"] else "failed"))
            return bool(result["passed"]) and failed is None, _short(message)
        if failed is not None:  # it ended without a verdict: OOMKilled, a crash before the JSON line ...
            last = (term.get("message") or "").strip().splitlines()[-1:]
            how = f"{term.get('reason') or 'Error'}, exit {term.get('exitCode')}"
            return False, _short(f"validation job failed ({how})" + (f": {last[0]}" if last else ""))
    if failed is not None:
        reason = failed.get("reason") or "Failed"
        detail = failed.get("message") or ""
        why = podstate.waiting_reason(pods)
        return False, _short(f"validation job failed: {reason}" + (f" ({detail})" if detail else "")
                             + (f"; pod: {why}" if why else ""))
    return False, "validation job completed without a result"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller")
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Validator:
    """Starts the validation Job of a canary revision and reads its verdict."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings

    def _images(self) -> Images:
        s = self.settings
        return Images(serving=s.serving_image, loader=s.loader_image, converter=s.converter_image,
                      pull_policy=s.image_pull_policy, serving_backend=s.serving_backend)

    def ensure_started(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, revision: str,
                       stable: str) -> None:
        """Create the revision's validation Job unless it exists (one GET per pass, one POST once)."""
        if spec.rollout.validation is None:
            return
        meta = md["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        job = build_validation_job(name, namespace, meta["uid"], spec, revision, stable, self._images())
        if self.kube.get_or_none("Job", namespace, job["metadata"]["name"]) is not None:
            return
        try:
            self.kube.create(job)
        except Conflict:
            return  # created meanwhile, or a stale one is still being deleted: the next pass looks again
        log.info("%s/%s: started validation Job %s", namespace, name, job["metadata"]["name"])
        events.post(self.kube, md, "Normal", REASON_STARTED,
                    f"revision {revision}: validation Job {job['metadata']['name']} started")

    def result(self, md: Mapping[str, Any], spec: api.ModelDeploymentSpec, revision: str) -> tuple[bool, str] | None:
        """(passed, message) once the Job finished, None while it runs or before it started.

        A Job that belongs to another owner (a deleted ModelDeployment of the same name) is left to
        the garbage collector; one built for other thresholds or dataset is deleted, so
        ensure_started makes a fresh one.
        """
        meta = md["metadata"]
        namespace = meta["namespace"]
        name = job_name(meta["name"], revision)
        job = self.kube.get_or_none("Job", namespace, name)
        if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
            return None
        if not _owned_by(job, meta["uid"]):
            return None
        annotations = job["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_FINGERPRINT) != fingerprint(spec):
            log.info("%s/%s: validation settings changed; replacing Job %s", namespace, meta["name"], name)
            with contextlib.suppress(Conflict, NotFound):  # gone or replaced meanwhile: the next pass sees it
                self.kube.delete("Job", namespace, name, uid=job["metadata"].get("uid"))
            return None
        if _condition(job, "Complete") is None and _condition(job, "Failed") is None:
            return None
        selector = ((job.get("spec") or {}).get("selector") or {}).get("matchLabels") or {"job-name": name}
        return verdict_from_job(job, self.kube.list("Pod", namespace, selector))
