"""The one home of rollout replica math (pure): how many pods each revision runs, pass by pass.

Every strategy that runs two revisions at once (canary steps, validation, promotion, rollback)
asks `targets()`, so there is one surge rule and one availability rule:

- **Surge** (`surge_pods`): extra pods a rollout may run on top of the desired replicas. Unset
  `maxSurgeGpus` means one pod, the Kubernetes convention; a set budget is counted in GPUs
  (`maxSurgeGpus // gpus per pod`). CPU-only pods cost no GPUs, so they always get one pod.
- **Availability** (`max_unavailable`): with any surge, the serving revision only gives up a pod
  for each pod the new revision has made Ready, so Ready pods never drop below the desired count.
  With an explicit surge of 0 the user chose to borrow capacity: one pod at a time, never the last
  one. With one replica and no surge there is no zero-downtime way at all: `blocked()` says so
  and the rollout waits (strategy Recreate is the way to choose the downtime).

Traffic follows pods: behind the main Service a revision's share is its share of Ready pods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Replicas of the serving (stable) and the new (canary) revision."""

    stable: int
    canary: int

    @property
    def weight(self) -> float:
        total = self.stable + self.canary
        return 100.0 * self.canary / total if total else 0.0


def surge_pods(desired: int, gpus_per_pod: int, max_surge_gpus: int | None) -> int:
    """Pods a rollout may add on top of `desired`: one by default, else the GPU budget in pods."""
    if max_surge_gpus is None or gpus_per_pod <= 0:
        return 1
    return max_surge_gpus // gpus_per_pod


def max_unavailable(desired: int, surge: int) -> int:
    """Ready pods a pass may give up below `desired`: none with a surge, one when the user set the
    surge to 0 and more than one replica serves, never the only one."""
    return 0 if surge > 0 or desired <= 1 else 1


def blocked(desired: int, surge: int) -> bool:
    """One replica and no surge: a second revision can only start by stopping the only pod."""
    return desired == 1 and surge == 0


def canary_pods(desired: int, weight: int) -> int:
    """Pods that carry `weight` percent, to the nearest pod: at least one (a canary needs a pod to be
    judged) and, below 100%, at most all but one (the stable revision is the yardstick)."""
    if weight <= 0 or desired <= 0:
        return 0
    if weight >= 100:
        return desired
    nearest = math.floor(desired * weight / 100 + 0.5)
    return max(1, min(nearest, desired - 1)) if desired > 1 else 1


def step_split(desired: int, weight: int, surge: int) -> Split:
    """Where a canary step ends: its canary pods, and the stable pods left beside them (the surge
    first keeps stable pods; beyond it stable pods make room)."""
    canary = canary_pods(desired, weight)
    if weight >= 100:
        return Split(stable=0, canary=max(1, desired))
    return Split(stable=max(0, desired - max(0, canary - surge)), canary=canary)


@dataclass(frozen=True)
class Live:
    """What the revisions run now: Deployment replicas and Ready pods."""

    stable_spec: int
    canary_spec: int
    stable_ready: int
    canary_ready: int


def targets(desired: int, goal: Split, surge: int, live: Live) -> Split:
    """One pass toward `goal`: the canary grows into the room under desired + surge, the stable
    revision shrinks only as far as Ready canary pods replace it (less `max_unavailable`), and
    shrinks to the goal at once when the goal is larger (a rollback, a lower step)."""
    unavailable = max_unavailable(desired, surge)
    room = max(0, desired + surge - live.stable_spec)
    canary = min(goal.canary, max(min(live.canary_spec, goal.canary), room))
    keep = desired - unavailable - min(live.canary_ready, canary)
    stable = min(max(goal.stable, keep), max(desired, goal.stable))
    return Split(stable=max(0, stable), canary=max(0, canary))


def rollback_targets(desired: int, live: Live) -> Split:
    """Back to the stable revision: it returns to full size first; the canary pods go once the
    stable revision serves every replica again (a judged-bad canary keeps its share of traffic
    for that long rather than leave fewer Ready pods than asked for)."""
    if live.stable_ready >= desired or live.canary_ready == 0:  # a canary with no Ready pod serves nobody
        return Split(stable=desired, canary=0)
    return Split(stable=desired, canary=live.canary_spec)


def promotion_targets(desired: int, surge: int, live: Live) -> Split:
    """Grow the canary to every replica; the stable revision leaves as canary pods become Ready."""
    return targets(desired, Split(stable=0, canary=desired), surge, live)
