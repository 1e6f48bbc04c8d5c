"""One closed-loop load generator for every server in benchmarks/serving.py.

A fixed pool of sender threads; each builds its own client (clients are not shared between
threads), then sends one image per request and waits for the answer before sending the next.
A short warm-up at the same concurrency is discarded; the measured phase stops by itself at
its deadline (requests in flight then are finished and counted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Send = Callable[[np.ndarray], object]


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # completed requests per second
    p50_ms: float
    p99_ms: float
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # kept for combine(), not reported

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "latencies_ms"}


def combine(parts: Sequence[LoadResult]) -> LoadResult:
    """One result from several slices at the same concurrency (interleaved with other servers, so a
    burst of another tenant's load is shared by all of them): requests over seconds, percentiles of
    every latency."""
    lat = [v for p in parts for v in p.latencies_ms]
    ms = np.asarray(lat) if lat else np.asarray([float("nan")])
    seconds = sum(p.seconds for p in parts)
    requests = sum(p.requests for p in parts)
    return LoadResult(
        concurrency=parts[0].concurrency, requests=requests, errors=sum(p.errors for p in parts),
        seconds=round(seconds, 3), throughput=requests / seconds if seconds else 0.0,
        p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
        first_error=next((p.first_error for p in parts if p.first_error), ""), latencies_ms=lat,
    )


def _phase(make_sender: Callable[[], Send], inputs: Sequence[np.ndarray], concurrency: int,
           duration_s: float) -> tuple[list[float], int, str, float]:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    ready = threading.Barrier(concurrency + 1)
    start_at: list[float] = []

    def sender(k: int) -> None:
        try:
            send = make_sender()
        except BaseException as e:
            first_error.append(f"client setup: {e!r}")
            ready.wait()
            return
        ready.wait()
        deadline = start_at[0] + duration_s
        i = k
        while time.perf_counter() < deadline:
            x = inputs[i % len(inputs)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                send(x)
            except Exception as e:
                errors[k] += 1
                if not first_error:
                    first_error.append(repr(e)[:300])
                continue
            latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    start_at.append(time.perf_counter() + 0.05)
    ready.wait()
    for t in threads:
        t.join(timeout=duration_s + 120)
    elapsed = time.perf_counter() - start_at[0]
    flat = [v for lat in latencies for v in lat]
    return flat, sum(errors), (first_error[0] if first_error else ""), elapsed


def run_load(make_sender: Callable[[], Send], inputs: Sequence[np.ndarray], concurrency: int,
             duration_s: float, warmup_s: float) -> LoadResult:
    if warmup_s > 0:
        _phase(make_sender, inputs, concurrency, warmup_s)
    lat, errors, first_error, elapsed = _phase(make_sender, inputs, concurrency, duration_s)
    ms = np.asarray(lat) * 1000.0 if lat else np.asarray([float("nan")])
    return LoadResult(
        concurrency=concurrency, requests=len(lat), errors=errors, seconds=round(elapsed, 3),
        throughput=len(lat) / elapsed, p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)), first_error=first_error, latencies_ms=(ms if lat else ms[:0]).tolist(),
    )
