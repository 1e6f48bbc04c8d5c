"""Default against tuned, served at once, at each concurrency level (the tuning benchmarks' loop).

Stdlib and numpy only, beside the tuner's own client: the real-GPU check (hack/gpu) runs it on a
machine with none of the benchmarks' other dependencies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modeldeploy.loader.tune_client import Request, closed_loop
from modeldeploy.tuning.score import Point

LEVELS = (1, 8, 32)
ROUNDS = 3


def _combined(points: list[Point]) -> dict[str, Any]:
    if any(p.errors or not p.requests for p in points):
        bad = next(p for p in points if p.errors or not p.requests)
        raise RuntimeError(f"requests failed at concurrency {bad.concurrency}: {bad.first_error}")
    throughput = sum(p.throughput for p in points) / len(points)
    return {"concurrency": points[0].concurrency, "throughput": round(throughput, 1),
            "p50Ms": round(float(np.median([p.p50_s for p in points])) * 1000, 2),
            "p99Ms": round(float(np.median([p.p99_s for p in points])) * 1000, 2),
            "requests": sum(p.requests for p in points)}


def compare_levels(targets: dict[str, tuple[str, str]], requests: list[Request], duration_s: float,
                   warmup_s: float, label: str = "") -> list[dict[str, Any]]:
    """Default and tuned (`targets`: which -> (url, model name)) at each level, in ROUNDS rounds
    alternating, the order swapped each round: both see the same machine. One row per level."""
    rows: list[dict[str, Any]] = []
    for level in LEVELS:
        got: dict[str, list[Point]] = {"default": [], "tuned": []}
        for r in range(ROUNDS):
            for which in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
                url, name = targets[which]
                got[which].append(closed_loop(url, name, requests, level, duration_s / ROUNDS, warmup_s))
        d, t = _combined(got["default"]), _combined(got["tuned"])
        rows.append({"concurrency": level, "default": d, "tuned": t,
                     "throughputRatio": round(t["throughput"] / d["throughput"], 3),
                     "p99Ratio": round(t["p99Ms"] / d["p99Ms"], 3)})
        print(f"  {label}c={level:>2}: default {d['throughput']:8.1f}/s p99 {d['p99Ms']:7.1f}ms | tuned "
              f"{t['throughput']:8.1f}/s p99 {t['p99Ms']:7.1f}ms | {rows[-1]['throughputRatio']}x, p99 "
              f"{rows[-1]['p99Ratio']}x", flush=True)
    return rows
