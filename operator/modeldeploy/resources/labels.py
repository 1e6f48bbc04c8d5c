"""Names, labels and ownership metadata shared by every object the operator builds (pure).

One place decides which labels select what: Services and the PDB select by the name label only
(all serving pods of a ModelDeployment), a revision adds the revision label, and the role label
lives on Deployments and Services but never on pods, so promoting a canary restarts nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import constants as c


def deployment_name(md_name: str, revision: str) -> str:
    """One Deployment per revision: `<name>-<revision>`."""
    return f"{md_name}-{revision}"


def stable_service_name(md_name: str) -> str:
    """Service selecting the stable revision's pods."""
    return f"{md_name}-stable"


def canary_service_name(md_name: str) -> str:
    """Service selecting the canary revision's pods."""
    return f"{md_name}-canary"


def selector_labels(md_name: str) -> dict[str, str]:
    """Selects every serving pod of a ModelDeployment, whatever its revision."""
    return {c.LABEL_NAME: md_name}


def revision_selector(md_name: str, revision: str) -> dict[str, str]:
    """Selects the pods of one revision (immutable Deployment selector, per-revision Services)."""
    return {c.LABEL_NAME: md_name, c.LABEL_REVISION: revision}


def common_labels(md_name: str) -> dict[str, str]:
    """Labels every child carries, so `kubectl get all -l modeldeploy.io/name=X` finds them."""
    return {
        c.LABEL_NAME: md_name,
        c.LABEL_APP_NAME: md_name,
        c.LABEL_APP_INSTANCE: md_name,
        c.LABEL_APP_COMPONENT: c.COMPONENT_SERVER,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }


def pod_labels(md_name: str, revision: str, model_version: str) -> dict[str, str]:
    """Pod template labels: fixed for the life of a revision (no role: see the module docstring)."""
    return {
        **common_labels(md_name),
        c.LABEL_REVISION: revision,
        c.LABEL_APP_VERSION: model_version,
    }


def build_pod_labels(md_name: str) -> dict[str, str]:
    """A build Job's pod template labels, for every revision: no name or revision label (Services and
    the PDB select serving pods by the name label, and a build pod must never receive traffic or
    count as a serving pod), but the build-of label, which the `<name>-build` NetworkPolicy selects
    on together with the component (no other pod carries both)."""
    return {
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_APP_COMPONENT: c.COMPONENT_BUILD,
        c.LABEL_BUILD_OF: md_name,
    }


JOB_NAME_LENGTH = 63  # the Job controller puts the name in the pods' job-name label


def job_name(md_name: str, kind: str, revision: str) -> str:
    """`<name>-<kind>-<revision>`, shortened with a hash of the name when it would pass 63 characters.

    ModelDeployment names may be 56 characters and revisions are 10, so the plain form can be 76:
    the name part is cut and a digest of the whole name keeps two long names apart.
    """
    plain = f"{md_name}-{kind}-{revision}"
    if len(plain) <= JOB_NAME_LENGTH:
        return plain
    digest = hashlib.sha256(md_name.encode()).hexdigest()[:6]
    tail = f"-{digest}-{kind}-{revision}"
    keep = JOB_NAME_LENGTH - len(tail)
    if keep < 1:  # not with 10-character revisions; keeps the function total anyway
        return f"{kind[0]}-{hashlib.sha256(plain.encode()).hexdigest()[: JOB_NAME_LENGTH - 2]}"
    return md_name[:keep].rstrip("-") + tail


def owner_reference(md_name: str, owner_uid: str) -> dict[str, Any]:
    """Controller reference to the ModelDeployment: deletion cascades, and adoption is unambiguous."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": md_name,
        "uid": owner_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(name: str, namespace: str, md_name: str, owner_uid: str, labels: dict[str, str]) -> dict[str, Any]:
    """metadata of a child object, owned by its ModelDeployment."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(sorted(labels.items())),
        "ownerReferences": [owner_reference(md_name, owner_uid)],
    }
