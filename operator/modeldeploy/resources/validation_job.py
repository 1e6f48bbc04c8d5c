"""The validation Job of a canary revision: the labelled dataset sent to the canary before live traffic (pure).

The Job runs `python -m modeldeploy.loader.validate` from the loader image with the model's
credentialsSecret mounted by reference, exactly like the loader init container: the operator
never reads the Secret, it only names it. The verdict comes back as one JSON line in the pod's
termination message, which the operator reads (validation.py). The contract between this builder
and the CLI is the environment below; docs/canary.md documents it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from .. import constants as c
from ..api import ModelDeploymentSpec, ValidationSpec
from . import labels
from .deployment import CREDENTIAL_KEYS, Images, _container_security, _pod_security

CONTAINER: Final = "validate"
COMMAND: Final = ("python", "-m", "modeldeploy.loader.validate")
TTL_AFTER_FINISHED_S: Final = 3600  # the verdict is read within seconds; an hour leaves time to debug
ACTIVE_DEADLINE_S: Final = 600  # fetch + inference of a dataset; past that the Job fails (and the gate with it)
COMPONENT: Final = "canary-validation"  # app.kubernetes.io/component of the Job and its pod
ANNOTATION_FINGERPRINT: Final = f"{c.GROUP}/validation-fingerprint"
ANNOTATION_STABLE: Final = f"{c.GROUP}/stable-revision"
VOLUME_TMP: Final = "tmp"
VOLUME_DATASET: Final = "dataset-source"
RESOURCES: Final = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    # the dataset is loaded into memory whole: 1 GiB covers a few hundred MB of .npz
    "limits": {"cpu": "1", "memory": "1Gi"},
}


def job_name(md_name: str, revision: str) -> str:
    """`<name>-validate-<revision>`, shortened with a hash of the name when it would pass 63 characters."""
    return labels.job_name(md_name, "validate", revision)


def canary_url(md_name: str, namespace: str) -> str:
    """Triton's HTTP endpoint behind the `<name>-canary` Service (always the canary revision's pods)."""
    return f"http://{labels.canary_service_name(md_name)}.{namespace}.svc:{c.PORT_HTTP}"


def stable_url(md_name: str, namespace: str) -> str:
    """Triton's HTTP endpoint behind the `<name>-stable` Service."""
    return f"http://{labels.stable_service_name(md_name)}.{namespace}.svc:{c.PORT_HTTP}"


def fingerprint(spec: ModelDeploymentSpec) -> str:
    """What a verdict depends on besides the revision: a Job built for other thresholds is stale.

    The revision hash leaves the rollout settings out, so a user who changes minAccuracy while a
    canary validates would otherwise get the old Job's verdict.
    """
    v = spec.rollout.validation
    payload = {
        "dataset": v.dataset_uri if v else None,
        "minAccuracy": v.min_accuracy if v else None,
        "minAgreement": v.min_agreement if v else None,
        "model": spec.model.name,
        "credentials": spec.model.source.credentials_secret,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _dataset_claim(uri: str) -> str | None:
    """Claim of a pvc:// dataset, which the pod must mount; None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].split("/", 1)[0] or None


def credential_env(secret: str | None) -> list[dict[str, Any]]:
    """The credentialsSecret's keys by secretKeyRef, as the loader gets them: names only, never values."""
    if not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in CREDENTIAL_KEYS
    ]


def validation_env(
    md_name: str, namespace: str, spec: ModelDeploymentSpec, validation: ValidationSpec, revision: str,
    stable_revision: str,
) -> list[dict[str, Any]]:
    """The CLI's inputs (docs/canary.md); the stable URL only when agreement is asked for."""
    env: list[dict[str, Any]] = [
        {"name": "MD_DATASET_URI", "value": validation.dataset_uri},
        {"name": "MD_MODEL_NAME", "value": spec.model.name},
        {"name": "MD_CANARY_URL", "value": canary_url(md_name, namespace)},
        {"name": "MD_REVISION", "value": revision},
    ]
    if validation.min_accuracy is not None:
        env.append({"name": "MD_MIN_ACCURACY", "value": repr(validation.min_accuracy)})
    if validation.min_agreement is not None:
        env += [
            {"name": "MD_STABLE_URL", "value": stable_url(md_name, namespace)},
            {"name": "MD_STABLE_REVISION", "value": stable_revision},
            {"name": "MD_MIN_AGREEMENT", "value": repr(validation.min_agreement)},
        ]
    if _dataset_claim(validation.dataset_uri):
        env.append({"name": "MD_SOURCE_MOUNT", "value": c.SOURCE_MOUNT_PATH})
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]
    return env + credential_env(spec.model.source.credentials_secret)


def _pod_spec(md_name: str, namespace: str, spec: ModelDeploymentSpec, validation: ValidationSpec,
              revision: str, stable_revision: str, images: Images) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": VOLUME_TMP, "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "1Gi"}}]
    if claim := _dataset_claim(validation.dataset_uri):
        mounts.append({"name": VOLUME_DATASET, "mountPath": c.SOURCE_MOUNT_PATH, "readOnly": True})
        volumes.append({"name": VOLUME_DATASET, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    container = {
        "name": CONTAINER,
        "image": images.loader,
        "imagePullPolicy": images.pull_policy,
        "command": list(COMMAND),
        "env": validation_env(md_name, namespace, spec, validation, revision, stable_revision),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {k: dict(v) for k, v in RESOURCES.items()},
    }
    return {
        "automountServiceAccountToken": False,  # it talks to Triton and the dataset store, never to the API
        "enableServiceLinks": True,  # the fallback to <name>-canary when the cluster has no DNS add-on
        "restartPolicy": "Never",
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
        "volumes": volumes,
    }


def build_validation_job(
    md_name: str,
    namespace: str,
    owner_uid: str,
    spec: ModelDeploymentSpec,
    revision: str,
    stable_revision: str,
    images: Images,
) -> dict[str, Any]:
    """batch/v1 Job `<name>-validate-<revision>`, owned by the ModelDeployment.

    The Job carries the name and revision labels; its pod deliberately does not: Services, the PDB,
    the autoscaler and revision observation select serving pods by those labels, and a
    validation pod must never count as (or receive traffic as) a serving pod of the revision.
    """
    validation = spec.rollout.validation
    if validation is None:
        raise ValueError("spec.rollout.validation is not set: there is nothing to validate")
    job_labels = {**labels.common_labels(md_name), c.LABEL_REVISION: revision, c.LABEL_APP_COMPONENT: COMPONENT}
    pod_labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_APP_COMPONENT: COMPONENT}
    meta = labels.object_meta(job_name(md_name, revision), namespace, md_name, owner_uid, job_labels)
    meta["annotations"] = {ANNOTATION_FINGERPRINT: fingerprint(spec), ANNOTATION_STABLE: stable_revision}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,  # a verdict is final: a failed validation is not retried into a pass
            "activeDeadlineSeconds": ACTIVE_DEADLINE_S,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            # a pod evicted by a node drain is not a verdict: it is replaced instead of failing the Job
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
            "template": {
                "metadata": {"labels": dict(sorted(pod_labels.items()))},
                "spec": _pod_spec(md_name, namespace, spec, validation, revision, stable_revision, images),
            },
        },
    }
