"""How many pods each revision gets at a canary weight, within the GPU budget (pure).

Traffic follows pods: behind the main Service, weight = canary ready pods / all ready pods. With
`maxSurgeGpus: 0` the stable revision gives up a pod for each canary pod, so the GPUs in use never
exceed what the stable revision alone had; surplus budget lets the stable revision keep its pods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    stable: int
    canary: int

    @property
    def weight(self) -> float:
        total = self.stable + self.canary
        return 100.0 * self.canary / total if total else 0.0


def canary_pods(desired: int, weight: int) -> int:
    """Pods that carry `weight` percent, to the nearest pod: at least one (a canary needs a pod to be
    judged) and, below 100%, at most all but one (the stable revision is the yardstick)."""
    if weight <= 0 or desired <= 0:
        return 0
    if weight >= 100:
        return desired
    nearest = math.floor(desired * weight / 100 + 0.5)
    return max(1, min(nearest, desired - 1)) if desired > 1 else 1


def split(desired: int, weight: int, gpus_per_pod: int, max_surge_gpus: int) -> Split:
    """Stable and canary pod counts for `weight`, never above `desired` pods plus the surge budget."""
    canary = canary_pods(desired, weight)
    if weight >= 100:
        return Split(stable=0, canary=max(1, desired))
    surge = max_surge_gpus // gpus_per_pod if gpus_per_pod > 0 else canary  # CPU pods cost no GPUs
    stable = desired - max(0, canary - surge)
    if desired == 1 and canary == 1 and stable == 0:
        # One replica and no budget: the canary replaces it (weight 100 for the step) rather than
        # exceed the GPU budget; the analysis still compares with the stable revision's history.
        return Split(stable=0, canary=1)
    return Split(stable=max(0, stable), canary=canary)


def route_weight(phase: str | None, step_weight: int) -> int:
    """The canary's share of requests when a Gateway routes them (HTTPRoute backend weights).

    Validating and rolling back: 0. Progressing (and paused): the step's weight. Promoting: 100,
    the canary is taking over. No canary, or a finished one: 0 (the stable Service is the model).
    """
    if phase in ("Progressing", "Paused"):
        return step_weight
    if phase == "Promoting":
        return 100
    return 0
