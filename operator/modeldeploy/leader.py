"""Leader election over a coordination.k8s.io Lease: two replicas, one writer.

Both replicas watch and keep their caches warm; only the leader runs passes, the ticker and the
autoscaler. A new leader needs nothing from the old one: canaries, autoscaling and switches keep
their state in each ModelDeployment's status, and the new leader queues a pass for every model.

Timing (defaults): the leader renews every 3 s; a Lease not renewed for 12 s, as seen on the
standby's own clock (never by comparing two machines' clocks), is taken over. A leader that
cannot renew steps down 9 s after its last renewal was sent, before anyone else can take over. A replica shutting
down cleanly releases the Lease, so the standby takes over at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import telemetry
from .config import Settings
from .kube.client import Kube
from .kube.lease import LeaseClient, micro_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observed:
    """The Lease's record as last seen, and when (this process's monotonic clock) it last changed."""

    holder: str
    renew_time: str
    duration: float
    seen_at: float


def record(lease: Mapping[str, Any] | None) -> tuple[str, str, float]:
    spec = (lease or {}).get("spec") or {}
    return (spec.get("holderIdentity") or "", spec.get("renewTime") or "",
            float(spec.get("leaseDurationSeconds") or 0))


def observe(previous: Observed | None, lease: Mapping[str, Any] | None, now: float) -> Observed:
    """The new observation: the clock restarts only when holder or renewal changed."""
    holder, renew, duration = record(lease)
    if previous is not None and (previous.holder, previous.renew_time) == (holder, renew):
        return previous
    return Observed(holder, renew, duration, now)


def may_take(observed: Observed | None, me: str, now: float) -> bool:
    """Whether this replica may write itself into the Lease: nobody holds it, it holds it already,
    or the holder has not renewed for a whole lease duration."""
    if observed is None or not observed.holder or observed.holder == me:
        return True
    return now - observed.seen_at >= observed.duration


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Elector:
    """Runs the election in two daemon threads (the Lease watch and the take/renew loop)."""

    def __init__(self, kube: Kube, settings: Settings, on_elected: Callable[[], None],
                 on_lost: Callable[[], None] = lambda: None) -> None:
        self.lease = LeaseClient(kube, settings.leader_namespace, settings.leader_lease)
        self.me = settings.identity or default_identity()
        self.duration = settings.lease_seconds
        self.renew_every = settings.renew_seconds
        # A leader that cannot renew steps down this long after its last renewal was sent: one
        # renewal period before the standby may take over, so there are never two leaders.
        self.renew_deadline = settings.lease_seconds - settings.renew_seconds
        self._on_elected, self._on_lost = on_elected, on_lost
        self._lock = threading.Lock()
        self._observed: Observed | None = None
        self._held: dict[str, Any] | None = None  # the Lease as our last write returned it
        self._leader = False
        self._last_renewal = 0.0
        self.stop = threading.Event()

    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        threading.Thread(target=self.lease.watch, args=(self._seen, self.stop), name="lease-watch",
                         daemon=True).start()
        threading.Thread(target=self._loop, name="lease", daemon=True).start()

    def _seen(self, lease: dict[str, Any] | None) -> None:
        with self._lock:
            self._observed = observe(self._observed, lease, time.monotonic())

    def _spec(self, previous: Mapping[str, Any] | None) -> dict[str, Any]:
        old = (previous or {}).get("spec") or {}
        now = micro_time()
        taking = old.get("holderIdentity") != self.me
        return {"holderIdentity": self.me, "leaseDurationSeconds": int(self.duration),
                "acquireTime": now if taking else old.get("acquireTime", now), "renewTime": now,
                "leaseTransitions": int(old.get("leaseTransitions") or 0) + (1 if taking and old else 0)}

    def _loop(self) -> None:
        while not self.stop.wait(0.5 if not self._leader else min(0.5, self.renew_every)):
            try:
                if self._leader:
                    self._renew()
                else:
                    self._try_take()
            except Exception as e:  # the API server unreachable: keep trying; a leader steps down
                log.warning("leader election: %s", e)
            if self._leader and time.monotonic() - self._last_renewal > self.renew_deadline:
                self._step_down(f"could not renew the Lease for {self.renew_deadline:.0f}s")

    def _try_take(self) -> None:
        with self._lock:
            observed = self._observed
        if not may_take(observed, self.me, time.monotonic()):
            return
        current = self.lease.get()
        if current is None:
            sent = time.monotonic()
            won = self.lease.create(self._spec(None))
        else:
            with self._lock:
                self._observed = observe(self._observed, current, time.monotonic())
                observed = self._observed
            if not may_take(observed, self.me, time.monotonic()):
                return
            sent = time.monotonic()
            won = self.lease.update(current, self._spec(current))
        if won is None:
            return
        previous = record(current)[0] if current else ""
        self._held, self._last_renewal, self._leader = won, sent, True
        telemetry.IS_LEADER.set(1)
        log.info("leader election: %s is the leader now (was: %s)", self.me, previous or "nobody")
        self._on_elected()

    def _renew(self) -> None:
        if time.monotonic() - self._last_renewal < self.renew_every or self._held is None:
            return
        sent = time.monotonic()  # the standby's clock starts when it sees the write: not before this
        renewed = self.lease.update(self._held, self._spec(self._held))
        if renewed is not None:
            self._held, self._last_renewal = renewed, sent
            return
        current = self.lease.get()  # lost a race: whose is it now?
        if current is not None and record(current)[0] == self.me:
            self._held = current
            return
        self._step_down(f"the Lease is held by {record(current)[0] or 'nobody'}")

    def _step_down(self, why: str) -> None:
        self._leader = False
        self._held = None
        telemetry.IS_LEADER.set(0)
        log.warning("leader election: %s stops leading: %s", self.me, why)
        self._on_lost()

    def release(self) -> None:
        """On a clean shutdown: hand the Lease back, so the standby takes over at once."""
        self.stop.set()
        if not self._leader or self._held is None:
            return
        self._leader = False
        telemetry.IS_LEADER.set(0)
        spec = {**(self._held.get("spec") or {}), "holderIdentity": None, "leaseDurationSeconds": 1,
                "renewTime": micro_time(dt.datetime.now(dt.UTC))}
        try:
            self.lease.update(self._held, spec)
            log.info("leader election: %s released the Lease", self.me)
        except Exception as e:
            log.warning("leader election: could not release the Lease: %s", e)
