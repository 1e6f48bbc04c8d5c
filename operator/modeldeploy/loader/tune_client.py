"""A closed-loop load generator for tuning: N senders, each waiting for its answer before the next.

Each sender thread has its own keep-alive HTTP connection and sends pre-encoded single-sample
inference requests (the binary tensor extension, loader/gate_triton.encode_infer): a warm-up, then
a measured window. The window counts the answers that arrive inside it (throughput) and their
latencies (p50, p99). A slow model gets a longer window: it is stretched (up to STRETCH times) until
it holds at least MIN_ANSWERS_PER_SENDER answers per sender, so a p99 is never read from a handful.
Stdlib only: what is timed is Triton, not a client library. A thin module on purpose: every
decision about the numbers is in modeldeploy.tuning.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..tuning.score import Point, percentile

REQUEST_TIMEOUT_S: Final = 120.0
MIN_ANSWERS_PER_SENDER: Final = 2
MIN_ANSWERS: Final = 20
STRETCH: Final = 6.0  # the window may grow to this many times its length for a slow model


@dataclass(frozen=True)
class Request:
    """One pre-encoded inference request (body and its JSON header's length)."""

    body: bytes
    header_length: int


@dataclass
class _Run:
    window_start: float
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[float, float]] = field(default_factory=list)  # (answered at, latency)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for done, _ in self.answers if done >= t)


def _sender(url: str, path: str, requests: Sequence[Request], offset: int, start: float, run: _Run) -> None:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=REQUEST_TIMEOUT_S)
    i = offset
    try:
        while time.monotonic() < start:
            time.sleep(0.0005)
        while not run.stop.is_set():
            req = requests[i % len(requests)]
            i += 1
            sent = time.monotonic()
            conn.request("POST", path, body=req.body, headers={
                "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(req.header_length)})
            resp = conn.getresponse()
            data = resp.read()
            done = time.monotonic()
            if resp.status != 200:
                with run.lock:
                    run.errors.append(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
                return
            with run.lock:
                run.answers.append((done, done - sent))
    except (OSError, http.client.HTTPException) as e:
        with run.lock:
            run.errors.append(f"{e.__class__.__name__}: {e}")
    finally:
        conn.close()


def closed_loop(url: str, model: str, requests: Sequence[Request], concurrency: int, seconds: float,
                warmup_s: float) -> Point:
    """`concurrency` senders: a warm-up of `warmup_s`, then a window of at least `seconds`; its Point."""
    path = f"/v2/models/{urllib.parse.quote(model)}/infer"
    start = time.monotonic() + 0.05
    run = _Run(window_start=start + warmup_s)
    threads = [threading.Thread(target=_sender, args=(url, path, requests, k, start, run), daemon=True)
               for k in range(concurrency)]
    for t in threads:
        t.start()
    want = max(MIN_ANSWERS, MIN_ANSWERS_PER_SENDER * concurrency)
    end, latest = run.window_start + seconds, run.window_start + seconds * STRETCH
    while (now := time.monotonic()) < end or (run.answered_since(run.window_start) < want and now < latest
                                              and not run.errors):
        time.sleep(min(0.05, max(0.0, end - now)) or 0.05)
    stop_at = time.monotonic()
    run.stop.set()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S + 5)
    with run.lock:
        lat = sorted(latency for done, latency in run.answers if run.window_start <= done <= stop_at)
        errors = list(run.errors)
    first = errors[0] if errors else ""
    if not lat:
        return Point(concurrency, 0.0, 0.0, 0.0, 0, max(1, len(errors)), first or "no answer inside the window")
    return Point(concurrency, len(lat) / (stop_at - run.window_start), percentile(lat, 50), percentile(lat, 99),
                 len(lat), len(errors), first)
