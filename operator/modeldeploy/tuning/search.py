"""What to measure next, within the time budget (pure): a compass search from the default.

A full grid of every setting is hundreds of configurations; the budget holds a dozen or two. So:
start at the default generated configuration, and measure the neighbours of the best candidate so
far (space.neighbors: one setting changed, most promising setting first). A neighbour that beats
the best by more than MIN_GAIN becomes the best, and the search continues from it with the
settings after the one that changed (coordinate descent's cycle: the batcher is not searched again
before instances, batch sizes and threads had their turn); it stops at a candidate no single change
improves, or when the next measurement would not fit the budget.
Stateless: the next step is a function of what has been measured, so it is a table test.

Budget: the sweep may start a measurement only when one more (estimated as the slowest so far)
plus the final confirmation (two more) still fits. The default is always measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .score import Measurement, better
from .settings import TuneSettings
from .space import Candidate, Hardware, effective, neighbors

MIN_GAIN: Final = 0.03  # a neighbour must beat the best by 3% to move the search
CONFIRM_MEASUREMENTS: Final = 2  # the default and the winner, measured again at the end
FIRST_ESTIMATE_S: Final = 10.0  # before anything was measured


def incumbent(default: Candidate, history: Sequence[Measurement], tune: TuneSettings) -> Measurement | None:
    """The best measurement so far, in the order measured (the default first)."""
    best: Measurement | None = None
    for m in history:
        if best is None or better(m, best, tune, MIN_GAIN):
            best = m
    return best


def estimate_s(history: Sequence[Measurement]) -> float:
    """What one more measurement costs: the slowest so far (loads differ more than runs)."""
    return max((m.seconds for m in history), default=FIRST_ESTIMATE_S)


def affordable(elapsed_s: float, budget_s: float, history: Sequence[Measurement], reserve: int = 0) -> bool:
    """Whether one more measurement plus `reserve` more still fit the budget."""
    return elapsed_s + estimate_s(history) * (1 + reserve) <= budget_s


def next_candidate(default: Candidate, hw: Hardware, history: Sequence[Measurement], tune: TuneSettings,
                   elapsed_s: float) -> Candidate | None:
    """The next candidate to measure, or None: done (a local optimum, or the budget is spent)."""
    if not history:
        return default
    if not affordable(elapsed_s, tune.budget_s, history, CONFIRM_MEASUREMENTS):
        return None
    best = incumbent(default, history, tune)
    if best is None:
        return None
    before = incumbent(default, history[:history.index(best)], tune)  # what the best improved on
    seen = {effective(m.candidate, default) for m in history}
    for c in neighbors(best.candidate, default, hw, None if before is None else before.candidate):
        e = effective(c, default)
        if e not in seen:
            return e
    return None


TARGET_CANDIDATES: Final = 16  # what a budget is sized for: windows shrink with the budget, not the sweep


def windows_s(tune: TuneSettings) -> tuple[float, float]:
    """(warm-up, measured) seconds per concurrency level, so that about TARGET_CANDIDATES fit the budget."""
    per_level = tune.budget_s / (TARGET_CANDIDATES * len(tune.concurrency))
    return min(1.0, max(0.2, per_level * 0.2)), min(5.0, max(0.5, per_level * 0.8))
