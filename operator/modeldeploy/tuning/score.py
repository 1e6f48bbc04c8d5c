"""One candidate's measurement and how it ranks under the objective and the latency bound (pure).

A candidate is measured at each concurrency level of a closed-loop client: throughput, p50, p99.
- objective `throughput`: the candidate's value is its best throughput at a level whose p99 meets
  the bound (any level without a bound). It meets the bound when some level does.
- objective `latency`: its value is the p99 at the highest level (the load the user named), lower
  is better. It meets the bound when that p99 does.
A candidate that meets the bound always ranks above one that does not; among those that miss it,
the one closest to it (lowest p99 at any level) ranks first. A failed candidate ranks last.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import TuneSettings
from .space import Candidate


@dataclass(frozen=True)
class Point:
    """One concurrency level of one candidate."""

    concurrency: int
    throughput: float  # answered requests per second
    p50_s: float
    p99_s: float
    requests: int = 0
    errors: int = 0
    first_error: str = ""  # what the first failed request got, for the build log


@dataclass(frozen=True)
class Measurement:
    """A candidate and its points; `error` when Triton refused it or a request failed."""

    candidate: Candidate
    points: tuple[Point, ...] = ()
    seconds: float = 0.0  # wall time it took, loading included (the budget's unit)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.points) and all(p.errors == 0 and p.requests > 0 for p in self.points)

    def at(self, concurrency: int) -> Point | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)

    @property
    def top(self) -> Point:
        return max(self.points, key=lambda p: p.concurrency)


def _within(p: Point, bound_s: float | None) -> bool:
    return bound_s is None or p.p99_s <= bound_s


def operating_point(m: Measurement, tune: TuneSettings) -> Point | None:
    """The point the candidate is judged at, when it meets the bound; None when it does not."""
    if not m.ok:
        return None
    if tune.objective == "latency":
        return m.top if _within(m.top, tune.max_p99_s) else None
    within = [p for p in m.points if _within(p, tune.max_p99_s)]
    return max(within, key=lambda p: (p.throughput, -p.concurrency)) if within else None


def meets(m: Measurement, tune: TuneSettings) -> bool:
    return operating_point(m, tune) is not None


def report_point(m: Measurement, tune: TuneSettings) -> Point:
    """The point shown in status: the operating point, else the top level (m must be ok)."""
    return operating_point(m, tune) or m.top


def value(m: Measurement, tune: TuneSettings) -> float:
    """Higher is better: throughput, or minus the p99 (objective latency, or a missed bound)."""
    point = operating_point(m, tune)
    if point is None:
        return -min(p.p99_s for p in m.points)
    return point.throughput if tune.objective == "throughput" else -point.p99_s


def better(a: Measurement, b: Measurement, tune: TuneSettings, margin: float = 0.0) -> bool:
    """Whether `a` ranks above `b`, by more than `margin` (a fraction of b's value) when both are
    on the same side of the bound: measurements are noisy, and a change must earn its place."""
    if not a.ok:
        return False
    if not b.ok:
        return True
    ma, mb = meets(a, tune), meets(b, tune)
    if ma != mb:
        return ma
    va, vb = value(a, tune), value(b, tune)
    return va > vb + margin * abs(vb)


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of ascending values: an observed latency, never an
    interpolated one, so a p99 of 100 requests is the 99th slowest."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), -(-int(q * len(sorted_values)) // 100)))
    return sorted_values[rank - 1]
