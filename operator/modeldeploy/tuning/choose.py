"""Which configuration the artifact gets (pure): the best, never worse than the default.

After the search, the best candidate and the default are measured once more (interleaved, so
both see the same machine) and each one's two measurements are averaged (`confirmed`). A
candidate replaces the default only if, on those numbers, it
- beats the default's objective value by more than MIN_GAIN (search.MIN_GAIN: noise is not a win),
- meets the latency bound whenever the default does,
- is not worse on the other metric at the highest concurrency: p99 at most P99_TOLERANCE above the
  default's (objective throughput), or throughput at most that much below it (objective latency).
Otherwise the default generated configuration is served: tuning never makes a model worse.
`ranked` lists every acceptable candidate, best first, the default last: the builder serves the
first whose outputs match the default's on the validation data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .score import Measurement, Point, better, meets, report_point
from .search import MIN_GAIN
from .settings import TuneSettings

P99_TOLERANCE: Final = 0.10


def _mean_point(a: Point, b: Point) -> Point:
    return Point(a.concurrency, (a.throughput + b.throughput) / 2, (a.p50_s + b.p50_s) / 2, (a.p99_s + b.p99_s) / 2,
                 a.requests + b.requests, a.errors + b.errors)


def confirmed(first: Measurement, again: Measurement) -> Measurement:
    """Two measurements of one candidate as one: each level's numbers averaged, errors kept."""
    if not again.ok or not first.ok:
        return first if not first.ok else again
    points = tuple(_mean_point(p, q) for p in first.points if (q := again.at(p.concurrency)) is not None)
    return dataclasses.replace(first, points=points, seconds=first.seconds + again.seconds)


def not_worse(m: Measurement, default: Measurement, tune: TuneSettings) -> bool:
    """The other metric at the highest concurrency is not worse than the default's (by the tolerance)."""
    top, base = m.top, default.top
    if tune.objective == "throughput":
        return top.p99_s <= base.p99_s * (1 + P99_TOLERANCE)
    return top.throughput >= base.throughput * (1 - P99_TOLERANCE)


def verdict(m: Measurement, default: Measurement, tune: TuneSettings) -> str:
    """Why `m` may not replace the default (the module docstring's three rules); empty when it may."""
    if m.candidate == default.candidate:
        return ""
    if not m.ok or not default.ok:
        return "a measurement failed"
    if meets(default, tune) and not meets(m, tune):
        return "the default meets maxP99 and it does not"
    if not better(m, default, tune, MIN_GAIN):
        return f"not better than the default by more than {MIN_GAIN:.0%}"
    if not not_worse(m, default, tune):
        other = "p99" if tune.objective == "throughput" else "throughput"
        return (f"its {other} at concurrency {m.top.concurrency} is more than {P99_TOLERANCE:.0%} worse than "
                "the default's")
    return ""


def acceptable(m: Measurement, default: Measurement, tune: TuneSettings) -> bool:
    """Whether `m` may replace the default."""
    return not verdict(m, default, tune)


def ranked(default: Measurement, measured: Sequence[Measurement], tune: TuneSettings) -> list[Measurement]:
    """Acceptable candidates, best first; the default always last (and never twice)."""
    others = [m for m in measured if m.candidate != default.candidate and acceptable(m, default, tune)]
    order: list[Measurement] = []
    for m in others:  # insertion sort on `better`: a total order for ok measurements
        i = next((k for k, o in enumerate(order) if better(m, o, tune)), len(order))
        order.insert(i, m)
    return [*order, default]


@dataclass(frozen=True)
class Outcome:
    """What tuning decided: the chosen measurement, the default's, and whether any met the bound."""

    chosen: Measurement
    default: Measurement
    bound_met: bool  # the chosen configuration meets the latency bound (True when there is none)
    measured: int  # candidates measured (the default included, confirmations not)
    seconds: float  # the whole sweep


def _point_json(p: Point) -> dict[str, Any]:
    return {"concurrency": p.concurrency, "throughput": round(p.throughput, 2), "p50Ms": round(p.p50_s * 1000, 3),
            "p99Ms": round(p.p99_s * 1000, 3)}


def measurement_json(m: Measurement) -> dict[str, Any]:
    """One measured candidate for the manifest: its settings and every level's numbers."""
    out: dict[str, Any] = {"settings": m.candidate.describe(), "seconds": round(m.seconds, 2),
                           "points": [_point_json(p) for p in m.points]}
    if not m.ok:
        out["error"] = m.error or "request errors"
    return out


def summary(o: Outcome, tune: TuneSettings) -> dict[str, Any]:
    """What the manifest and status record: the settings, and default vs chosen at one concurrency
    (the chosen one's operating point: both at the same load)."""
    chosen = report_point(o.chosen, tune)
    default = o.default.at(chosen.concurrency) or o.default.top
    return {
        "objective": tune.objective,
        "maxP99Ms": None if tune.max_p99_s is None else round(tune.max_p99_s * 1000, 3),
        "boundMet": o.bound_met,
        "isDefault": o.chosen.candidate == o.default.candidate,
        "settings": o.chosen.candidate.describe(),
        "default": _point_json(default),
        "tuned": _point_json(chosen),
        "candidates": o.measured,
        "seconds": round(o.seconds, 1),
        "budgetSeconds": round(tune.budget_s, 1),
    }


def table(measured: Sequence[Measurement], levels: Sequence[int]) -> list[str]:
    """The build log's table: one line per candidate, in the order measured."""
    head = "  ".join(f"c={c}: req/s p50 p99 (ms)".ljust(30) for c in levels)
    lines = [f"{'#':>3}  {'candidate':<70}  {head}"]
    for i, m in enumerate(measured):
        if not m.ok:
            lines.append(f"{i:>3}  {m.candidate.short():<70}  failed: {m.error or 'request errors'}")
            continue
        cells = []
        for c in levels:
            p = m.at(c)
            cells.append((f"{p.throughput:9.1f} {p.p50_s * 1000:7.2f} {p.p99_s * 1000:7.2f}" if p else "-").ljust(30))
        lines.append(f"{i:>3}  {m.candidate.short():<70}  {'  '.join(cells)}")
    return lines


def miss_message(o: Outcome, tune: TuneSettings) -> str:
    """Why the bound was not met, with the numbers: the bound, the lowest p99 the chosen one has
    (and where), what it serves at the top level, and how much was tried."""
    bound = "none" if tune.max_p99_s is None else f"{tune.max_p99_s * 1000:g}ms"
    low = min(o.chosen.points, key=lambda p: p.p99_s) if o.chosen.ok else None
    best = f"lowest p99 {low.p99_s * 1000:.1f}ms at concurrency {low.concurrency}" if low else "no answer"
    return (f"no configuration met maxP99 {bound}: the best ({o.chosen.candidate.short()}) has {best}, "
            f"after {o.measured} candidates in {o.seconds:.0f}s of a {tune.budget_s:.0f}s budget")
