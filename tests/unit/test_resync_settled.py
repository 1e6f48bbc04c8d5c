"""Which models get timed passes: only those not settled (resync.settled is pure)."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy.resync import settled


def _md(generation: int = 2, observed: int | None = 2, phase: str | None = "Ready",
        canary: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if observed is not None:
        status["observedGeneration"] = observed
    if phase is not None:
        status["phase"] = phase
    if canary is not None:
        status["canary"] = canary
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(("md", "expected"), [
    (_md(), True),
    (_md(phase="Failed"), True),  # only a new spec (an event) changes a failed first revision
    (_md(canary={"phase": "Promoted"}), True),
    (_md(canary={"phase": "RolledBack"}), True),
    (_md(observed=1), False),  # status does not describe the spec yet
    (_md(observed=None, phase=None), False),  # never reconciled
    (_md(phase="Loading"), False),  # a startup timeout may be due
    (_md(phase="Pending"), False),
    (_md(phase="Degraded"), False),
    (_md(phase="Progressing"), False),
    (_md(canary={"phase": "Progressing"}), False),
    (_md(canary={"phase": "Paused"}), False),
])
def test_settled(md: dict[str, Any], expected: bool) -> None:
    assert settled(md) is expected
