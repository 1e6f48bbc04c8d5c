"""What the user asked tuning for (spec.model.optimization.tune), as the build Job gets it (MD_TUNE).

One JSON object in one variable, canonical (sorted keys), so the operator, the builder and the
artifact key all read the same values. Parsed strictly: a bad value is a ValueError naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

OBJECTIVES: Final = ("throughput", "latency")
ON_BOUND_MISS: Final = ("ServeBest", "Fail")
DEFAULT_BUDGET_S: Final = 180.0  # a few minutes: ~20 candidates of a small model on a CPU
MIN_BUDGET_S: Final = 10.0
MAX_BUDGET_S: Final = 3600.0  # the build Job's deadline is an hour
DEFAULT_CONCURRENCY: Final = (1, 8, 32)
MAX_CONCURRENCY: Final = 256


@dataclass(frozen=True)
class TuneSettings:
    """The tuning request. `max_p99_s` None: no latency bound. `cpus` 0: unknown (use the machine's)."""

    objective: str = "throughput"
    max_p99_s: float | None = None
    budget_s: float = DEFAULT_BUDGET_S
    on_bound_miss: str = "ServeBest"
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    cpus: int = 0  # the serving container's CPU limit (or request), rounded up: what Triton may use

    def to_json(self) -> dict[str, Any]:
        """The canonical form: MD_TUNE's value and the artifact key's `tune` input."""
        return {
            "objective": self.objective,
            "maxP99Ms": None if self.max_p99_s is None else round(self.max_p99_s * 1000, 3),
            "budgetSeconds": round(self.budget_s, 3),
            "onBoundMiss": self.on_bound_miss,
            "concurrency": list(self.concurrency),
            "cpus": self.cpus,
        }

    def to_env(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def _number(d: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{key} must be between {lo:g} and {hi:g}, not {value:g}")
    return float(value)


def _levels(raw: Any) -> tuple[int, ...]:
    if raw is None:
        return DEFAULT_CONCURRENCY
    if not isinstance(raw, list) or not 1 <= len(raw) <= 8:
        raise ValueError("concurrency must be a list of 1 to 8 integers")
    if any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CONCURRENCY for c in raw):
        raise ValueError(f"concurrency levels must be integers between 1 and {MAX_CONCURRENCY}")
    return tuple(sorted(set(raw)))


def parse(text: str) -> TuneSettings | None:
    """MD_TUNE's JSON; empty: no tuning. ValueError names the bad key."""
    if not text.strip():
        return None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError("must be a JSON object")
    unknown = set(d) - {"objective", "maxP99Ms", "budgetSeconds", "onBoundMiss", "concurrency", "cpus"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    objective = d.get("objective", "throughput")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    miss = d.get("onBoundMiss", "ServeBest")
    if miss not in ON_BOUND_MISS:
        raise ValueError(f"onBoundMiss must be one of {', '.join(ON_BOUND_MISS)}, not {miss!r}")
    p99_ms = _number(d, "maxP99Ms", 0.001, 3_600_000)
    budget = _number(d, "budgetSeconds", MIN_BUDGET_S, MAX_BUDGET_S)
    cpus = _number(d, "cpus", 0, 4096)
    if cpus is not None and cpus != int(cpus):
        raise ValueError(f"cpus must be an integer, not {cpus:g}")
    return TuneSettings(
        objective=str(objective),
        max_p99_s=None if p99_ms is None else p99_ms / 1000,
        budget_s=DEFAULT_BUDGET_S if budget is None else budget,
        on_bound_miss=str(miss),
        concurrency=_levels(d.get("concurrency")),
        cpus=0 if cpus is None else int(cpus),
    )
