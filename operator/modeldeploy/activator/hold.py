"""Per-model gates: hold requests (bounded, with a deadline) until the model has a Ready pod.

A gate is closed while the model has no Ready pod. The first held request starts a probe of the
model's pods (`GET /v2/health/ready` through the always-selecting Service in the route, every
`probe_interval_s`) and signals demand; the probe opening the gate releases every held request at
once. A forward that cannot connect closes the gate again (the model went back to zero) and the
request is held again within its own deadline. Nothing is ever queued without a bound: past
`max_held` a request is refused at once (429), and a request not released by its deadline gets
503; both with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from .metrics import ActivatorMetrics
from .routes import Route

log: Final = logging.getLogger("modeldeploy.activator")


class Refused(Exception):
    """A request the activator answers itself: `status` (HTTP) and `reason` (a metrics label)."""

    status: int = 503
    reason: str = ""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverCap(Refused):
    status, reason = 429, "over_cap"


class HoldTimeout(Refused):
    status, reason = 503, "timed_out"


class UnknownModel(Refused):
    status, reason = 503, "unknown_model"


class Draining(Refused):
    status, reason = 503, "draining"


class Demand(Protocol):
    """Tells the operator a model at zero has requests (non-blocking; throttled by the sink)."""

    def want(self, route: Route) -> None: ...

    def forget(self, route: Route) -> None: ...


@dataclass(frozen=True)
class HoldSettings:
    max_held: int = 1000  # per model, per activator replica
    timeout_s: float = 120.0
    probe_interval_s: float = 0.1
    probe_timeout_s: float = 1.0
    retry_after_s: int = 2


Probe = Callable[[Route], Awaitable[bool]]


class Gate:
    """One model's gate."""

    def __init__(self, route: Route, settings: HoldSettings, metrics: ActivatorMetrics, probe: Probe,
                 demand: Demand, clock: Callable[[], float] = time.monotonic) -> None:
        self.route = route
        self.settings = settings
        self.metrics = metrics
        self._probe = probe
        self._demand = demand
        self._clock = clock
        self._open = asyncio.Event()
        self.waiting = 0
        self.cold_since: float | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._labels = {"namespace": route.namespace, "name": route.name}
        self._refusal: Refused | None = None  # set when the activator stops: held requests get it
        self._target: Route | None = None  # where the probe found the model ready: a pod, or the Service

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def target(self) -> Route:
        """Where to forward: the pod the probe found ready (no wait for kube-proxy), else the Service."""
        return self._target or self.route

    def close(self, why: str = "no pod answers") -> None:
        """The pods are gone (a forward could not connect, or the model went to zero): hold again
        from now on."""
        if self._open.is_set():
            log.info("%s: %s: holding requests again", self.route.key, why)
            self._demand.forget(self.route)
        self._open.clear()
        self._target = None

    def update(self, route: Route) -> None:
        """The same model with new starting pods or a new `serving`: when the operator took its
        Service off the pods (the model went to zero), the gate closes before any request is sent
        to where its last pods were."""
        if self.route.serving and not route.serving:
            self.close("the model went to zero")
        self.route = route

    async def _probe_once(self) -> Route | None:
        """Every starting pod the operator listed and the Service, at once: the first pod that
        answers ready (else the Service, when it does)."""
        candidates = [self.route.via_pod(a) for a in self.route.pods] + [self.route]

        async def ask(candidate: Route) -> Route | None:
            try:
                return candidate if await self._probe(candidate) else None
            except Exception as e:  # a probe must never end the loop: requests are waiting on it
                log.debug("%s: probe of %s failed: %s", self.route.key, candidate.http, e)
                return None
        # The first that answers ready wins: an address that does not answer (a pod gone, its
        # connect waiting on ARP) must not hold back one that does.
        tasks = [asyncio.ensure_future(ask(c)) for c in candidates]
        try:
            for done in asyncio.as_completed(tasks):
                found = await done
                if found is not None:
                    return found
            return None
        finally:
            for t in tasks:
                t.cancel()

    async def wait(self, deadline: float) -> float:
        """Return once the gate is open (seconds held), or raise OverCap / HoldTimeout."""
        if self._refusal is not None:
            raise self._refusal
        if self._open.is_set():
            return 0.0
        s = self.settings
        if self.waiting >= s.max_held:
            self.metrics.rejected.labels(reason="over_cap").inc()
            self.metrics.rejected_model.labels(**self._labels, reason="over_cap").inc()
            raise OverCap(f"{self.route.key} is starting and already holds {s.max_held} requests", s.retry_after_s)
        began = self._clock()
        if self.cold_since is None:
            self.cold_since = began
            log.info("%s: request held: model at zero, asking for a pod", self.route.key)
        self.waiting += 1
        self.metrics.held.labels(**self._labels).inc()
        self.metrics.held_total.labels(**self._labels).inc()
        self._demand.want(self.route)
        self._ensure_probe()
        try:
            await asyncio.wait_for(self._open.wait(), max(0.0, deadline - began))
        except TimeoutError:
            self.metrics.timed_out.labels(**self._labels).inc()
            raise HoldTimeout(f"{self.route.key} has no Ready pod yet (held {deadline - began:.0f}s)",
                              s.retry_after_s) from None
        finally:
            self.waiting -= 1
            self.metrics.held.labels(**self._labels).dec()
        if self._refusal is not None:
            self.metrics.rejected.labels(reason=self._refusal.reason).inc()
            raise self._refusal
        held = self._clock() - began
        self.metrics.hold_seconds.labels(**self._labels).observe(held)
        return held

    def _ensure_probe(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(),
                                                                      name=f"probe {self.route.key}")

    async def _probe_loop(self) -> None:
        while not self._open.is_set() and self.waiting > 0:
            found = await self._probe_once()
            if found is not None:
                self._target = found
                if self.cold_since is not None:
                    cold = self._clock() - self.cold_since
                    self.metrics.cold_start.labels(**self._labels).observe(cold)
                    log.info("%s: pod Ready %.2fs after the first held request (at %s): releasing %d request(s)",
                             self.route.key, cold, found.http, self.waiting)
                self.cold_since = None
                self._open.set()
                return
            self._demand.want(self.route)  # renews while requests wait (throttled by the sink)
            await asyncio.sleep(self.settings.probe_interval_s)

    def refuse_all(self, refusal: Refused) -> None:
        """Answer every held request (and any later one) with `refusal`: the activator is stopping."""
        self._refusal = refusal
        self._open.set()

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task


class Gates:
    """The gate of every registered model; a route that changes backends gets a fresh gate."""

    def __init__(self, settings: HoldSettings, metrics: ActivatorMetrics, probe: Probe, demand: Demand) -> None:
        self.settings = settings
        self.metrics = metrics
        self._probe = probe
        self._demand = demand
        self._gates: dict[str, Gate] = {}
        self.draining = False

    def gate(self, route: Route) -> Gate:
        g = self._gates.get(route.key)
        if g is None or not g.route.same_backends(route):
            g = self._gates[route.key] = Gate(route, self.settings, self.metrics, self._probe, self._demand)
        else:
            g.update(route)  # only the starting pods or `serving` changed: the requests it holds stay held
        return g

    def refresh(self, routes: Mapping[str, Route]) -> None:
        """New routes: gates whose model only has new starting pods probe them from now on."""
        for key, g in self._gates.items():
            new = routes.get(key)
            if new is not None and g.route.same_backends(new):
                g.update(new)

    def check_draining(self) -> None:
        if self.draining:
            self.metrics.rejected.labels(reason="draining").inc()
            raise Draining("the activator is stopping: retry (another replica takes the request)", 1)

    def over_budget(self, route: Route, budget: int) -> OverCap:
        """A request body that would take the held bodies past the replica's memory budget: 429."""
        self.metrics.rejected.labels(reason="over_cap").inc()
        self.metrics.rejected_model.labels(namespace=route.namespace, name=route.name, reason="over_cap").inc()
        return OverCap(f"the activator holds {budget} bytes of requests already", self.settings.retry_after_s)

    def timed_out(self, route: Route) -> HoldTimeout:
        self.metrics.timed_out.labels(namespace=route.namespace, name=route.name).inc()
        return HoldTimeout(f"{route.key} has no Ready pod yet", self.settings.retry_after_s)

    def unknown(self, problem: str) -> UnknownModel:
        self.metrics.rejected.labels(reason="unknown_model").inc()
        return UnknownModel(problem, self.settings.retry_after_s)

    def refuse_held(self) -> int:
        """At the end of the drain: answer what is still held with 503 + Retry-After 1 (a retry
        reaches the other replica) instead of closing the connections under it."""
        held = self.waiting
        for g in self._gates.values():
            g.refuse_all(Draining("the activator is stopping: retry (another replica takes the request)", 1))
        return held

    @property
    def waiting(self) -> int:
        return sum(g.waiting for g in self._gates.values())

    def prune(self, keys: set[str]) -> None:
        """Forget gates of models no longer registered that hold nothing."""
        for key in [k for k, g in self._gates.items() if k not in keys and g.waiting == 0]:
            del self._gates[key]

    async def aclose(self) -> None:
        for g in list(self._gates.values()):
            await g.aclose()
