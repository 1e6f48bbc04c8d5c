"""The canary's share of requests when a Gateway routes them (HTTPRoute backend weights), pure.

Weights follow Ready endpoints: a backend without a Ready pod gets nothing, whatever the step
says, so a Gateway never sends a request to a revision that cannot answer it. (Behind the main
Service traffic follows Ready pods by itself; rollout/replicas.py decides how many there are.)
"""

from __future__ import annotations


def route_weight(phase: str | None, step_weight: int, *, stable_ready: int, canary_ready: int) -> int:
    """Validating and rolling back: 0. Progressing (and paused): the step's weight. Promoting: 100,
    the canary is taking over. No canary, or a finished one: 0 (the stable Service is the model).
    Then Ready endpoints decide: no Ready canary pod -> 0; no Ready stable pod -> 100."""
    if phase in ("Progressing", "Paused"):
        weight = step_weight
    elif phase == "Promoting":
        weight = 100
    else:
        return 0
    if canary_ready <= 0:
        return 0
    if stable_ready <= 0:
        return 100
    return weight
