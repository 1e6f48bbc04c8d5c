"""PodDisruptionBudget over all serving pods of a ModelDeployment (pure)."""

from __future__ import annotations

from typing import Any

from . import labels


def build_pdb(md_name: str, namespace: str, owner_uid: str, replicas: int | None = None) -> dict[str, Any]:
    """policy/v1 PDB allowing one voluntary disruption at a time, across every revision.

    maxUnavailable 1 rather than minAvailable N-1: it protects as much, does not change (and need
    rewriting) whenever the replica count does, keeps working while an autoscaler moves replicas,
    and never blocks a node drain forever when there is a single replica (minAvailable 1 would).
    `replicas` is accepted but deliberately unused for those reasons.
    unhealthyPodEvictionPolicy AlwaysAllow: a pod whose model never loads must not hold a drain.
    """
    del replicas
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": labels.object_meta(md_name, namespace, md_name, owner_uid, labels.common_labels(md_name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels.selector_labels(md_name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
