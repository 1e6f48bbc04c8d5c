"""A closed-loop load generator for tuning: N senders, each waiting for its answer before the next.

Each sender thread has its own keep-alive HTTP connection and sends pre-encoded single-sample
inference requests (the binary tensor extension, loader/gate_triton.encode_infer) for a warm-up
and then a measured window. Throughput counts the answers that arrive inside the window; p50 and
p99 are over those answers' latencies. Stdlib only: what is timed is Triton, not a client library.
A thin module on purpose: every decision about the numbers is in modeldeploy.tuning.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..tuning.score import Point, percentile

REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Request:
    """One pre-encoded inference request (body and its JSON header's length)."""

    body: bytes
    header_length: int


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender(url: str, path: str, requests: Sequence[Request], offset: int, start: float, window: tuple[float, float],
            tally: _Tally) -> None:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=REQUEST_TIMEOUT_S)
    mine: list[float] = []
    i = offset
    try:
        while time.monotonic() < start:
            time.sleep(0.0005)
        while True:
            sent = time.monotonic()
            if sent >= window[1]:
                break
            req = requests[i % len(requests)]
            i += 1
            conn.request("POST", path, body=req.body, headers={
                "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(req.header_length)})
            resp = conn.getresponse()
            data = resp.read()
            done = time.monotonic()
            if resp.status != 200:
                with tally.lock:
                    tally.errors.append(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
                break
            if window[0] <= sent and done <= window[1]:
                mine.append(done - sent)
    except (OSError, http.client.HTTPException) as e:
        with tally.lock:
            tally.errors.append(f"{e.__class__.__name__}: {e}")
    finally:
        conn.close()
        with tally.lock:
            tally.latencies.extend(mine)


def closed_loop(url: str, model: str, requests: Sequence[Request], concurrency: int, seconds: float,
                warmup_s: float) -> Point:
    """`concurrency` senders for `warmup_s` + `seconds`; the Point of the measured window."""
    path = f"/v2/models/{urllib.parse.quote(model)}/infer"
    tally = _Tally()
    start = time.monotonic() + 0.05
    window = (start + warmup_s, start + warmup_s + seconds)
    threads = [threading.Thread(target=_sender, args=(url, path, requests, k, start, window, tally), daemon=True)
               for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=warmup_s + seconds + REQUEST_TIMEOUT_S + 5)
    lat = sorted(tally.latencies)
    if not lat:
        return Point(concurrency, 0.0, 0.0, 0.0, 0, max(1, len(tally.errors)))
    return Point(concurrency, len(lat) / seconds, percentile(lat, 50), percentile(lat, 99), len(lat),
                 len(tally.errors))

