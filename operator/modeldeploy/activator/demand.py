"""Demand for the operator, throttled: the first held request of a model is written at once, then at
most once per `renew_s` while requests keep arriving (a renewal, not one write per request).

Writes run in a thread (the API client is synchronous) and never block a request; a failed write
is retried on the next want() or renewal. The sink is anything with `signal(models)`: the demand
Lease (kube/activator.py) in a cluster, a list in unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from .metrics import ActivatorMetrics
from .routes import Route

log: Final = logging.getLogger("modeldeploy.activator")


class Sink(Protocol):
    def signal(self, models: list[tuple[str, str]]) -> None: ...


class ThrottledDemand:
    """want(route) from the event loop; one writer task sends batches to the sink."""

    def __init__(self, sink: Sink | None, metrics: ActivatorMetrics, renew_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._metrics = metrics
        self.renew_s = renew_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._pending: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def want(self, route: Route) -> None:
        key = (route.namespace, route.name)
        last = self._last.get(key)
        if last is not None and self._clock() - last < self.renew_s:
            return  # written (or being written) within the renewal interval
        self._last[key] = self._clock()  # forgotten again if the write fails, so the next want() retries
        self._pending.add(key)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="demand")

    def forget(self, route: Route) -> None:
        """A new cold start of this model: its next want() is written at once, not at the renewal."""
        self._last.pop((route.namespace, route.name), None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = sorted(self._pending)
            self._pending.clear()
            if not batch or self._sink is None:
                continue
            began = self._clock()
            try:
                await asyncio.to_thread(self._sink.signal, batch)
            except Exception as e:
                for key in batch:
                    self._last.pop(key, None)
                self._metrics.demand_signals.labels(result="error").inc()
                log.warning("demand for %s not written: %s", ", ".join(f"{n}/{m}" for n, m in batch),
                            e.__class__.__name__)
                await asyncio.sleep(0.5)  # the next want() (or probe tick) retries
                continue
            self._metrics.demand_signals.labels(result="ok").inc()
            log.debug("demand written for %s in %.3fs", batch, self._clock() - began)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
