"""Leader election (pure): the observation clock, who may take the Lease, and two Electors on one Lease.

No threads and no API server: the Electors share an in-memory Lease with the API server's optimistic
concurrency (a write with a stale resourceVersion loses), their step methods are called directly, and
time is a fake monotonic clock.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from modeldeploy import leader, telemetry
from modeldeploy.config import Settings
from modeldeploy.leader import Elector, Observed, may_take, observe, record

DURATION = 12.0
RENEW = 3.0


# --- the pure functions -----------------------------------------------------------------------

def lease(holder: str | None, renew: str = "r1", duration: float | None = 12) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def test_record_reads_holder_renewal_and_duration() -> None:
    assert record(lease("a", "t1", 12)) == ("a", "t1", 12.0)
    assert record(None) == ("", "", 0.0)
    assert record({"metadata": {}}) == ("", "", 0.0)
    assert record(lease(None, "t2", 1)) == ("", "t2", 1.0)  # released


def test_observe_starts_the_clock_on_the_first_sighting() -> None:
    assert observe(None, lease("a", "t1"), 100.0) == Observed("a", "t1", 12.0, 100.0)
    assert observe(None, None, 5.0) == Observed("", "", 0.0, 5.0)


def test_observe_keeps_the_clock_while_holder_and_renewal_are_unchanged() -> None:
    first = observe(None, lease("a", "t1"), 100.0)
    assert observe(first, lease("a", "t1"), 150.0) is first
    # only holder and renewTime restart the clock; another duration alone does not
    assert observe(first, lease("a", "t1", duration=60), 150.0) is first


@pytest.mark.parametrize("changed", [lease("a", "t2"), lease("b", "t1"), lease(None, "t1"), None])
def test_observe_restarts_the_clock_when_holder_or_renewal_change(changed: dict[str, Any] | None) -> None:
    first = observe(None, lease("a", "t1"), 100.0)
    again = observe(first, changed, 150.0)
    assert again.seen_at == 150.0
    assert (again.holder, again.renew_time, again.duration) == record(changed)


def test_may_take_with_no_lease_or_a_released_one() -> None:
    assert may_take(None, "me", 0.0)
    assert may_take(Observed("", "", 0.0, 100.0), "me", 100.0)  # no Lease object
    assert may_take(Observed("", "t1", 1.0, 100.0), "me", 100.0)  # released: at once


def test_may_take_its_own_lease() -> None:
    assert may_take(Observed("me", "t1", 12.0, 100.0), "me", 100.0)


def test_may_take_anothers_lease_only_after_a_whole_duration() -> None:
    seen = Observed("other", "t1", 12.0, 100.0)
    assert not may_take(seen, "me", 100.0)
    assert not may_take(seen, "me", 111.999)
    assert may_take(seen, "me", 112.0)
    assert may_take(seen, "me", 500.0)


# --- fakes ------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Store:
    """The Lease on the API server: resourceVersions, conflicts, and a synchronous watch."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.writes = 0
        self.watchers: list[Callable[[dict[str, Any] | None], None]] = []

    def write(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        self.rv += 1
        self.writes += 1
        self.lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "modeldeploy-leader", "namespace": "ns", "resourceVersion": str(self.rv)},
                      "spec": dict(spec)}
        for watch in self.watchers:
            watch(copy.deepcopy(self.lease))
        return copy.deepcopy(self.lease)

    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        return self.lease["spec"]


class FakeLeaseClient:
    """One replica's view of the Store, shaped like LeaseClient; `down` makes its API calls fail."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.after_get: Callable[[], None] | None = None  # runs between this replica's GET and its write

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the API server is unreachable")

    def get(self) -> dict[str, Any] | None:
        self._check()
        found = copy.deepcopy(self.store.lease)
        if self.after_get is not None:
            hook, self.after_get = self.after_get, None
            hook()
        return found

    def create(self, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        self._check()
        if self.store.lease is not None:
            return None  # AlreadyExists
        return self.store.write(spec)

    def update(self, lease: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any] | None:
        self._check()
        if self.store.lease is None:
            return None  # NotFound
        if lease["metadata"]["resourceVersion"] != self.store.lease["metadata"]["resourceVersion"]:
            return None  # Conflict
        return self.store.write(spec)


class Replica:
    def __init__(self, store: Store, identity: str, *, watch: bool = True) -> None:
        self.elected = 0
        self.lost = 0
        settings = Settings(leader_namespace="ns", identity=identity, lease_seconds=DURATION, renew_seconds=RENEW)
        self.e = Elector(None, settings, on_elected=self._on_elected, on_lost=self._on_lost)  # type: ignore[arg-type]
        self.client = FakeLeaseClient(store)
        self.e.lease = self.client  # type: ignore[assignment]
        if watch:
            store.watchers.append(self.e._seen)

    def _on_elected(self) -> None:
        self.elected += 1

    def _on_lost(self) -> None:
        self.lost += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(leader.time, "monotonic", c)
    stamps = iter(range(1, 1_000_000))  # every renewTime distinct, whatever the wall clock's resolution

    def micro_time(t: object = None) -> str:
        return f"2030-01-01T00:00:00.{next(stamps):06d}Z"

    monkeypatch.setattr(leader, "micro_time", micro_time)
    return c


def leader_gauge() -> float | None:
    return telemetry.REGISTRY.get_sample_value("modeldeploy_leader")


# --- two Electors on one Lease ----------------------------------------------------------------

def test_the_first_replica_creates_the_lease_and_leads(clock: Clock) -> None:
    store = Store()
    a = Replica(store, "a")
    assert not a.e.is_leader()
    a.e._try_take()
    assert a.e.is_leader()
    assert a.elected == 1
    assert leader_gauge() == 1
    spec = store.spec()
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 12
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]


def test_renewal_waits_for_renew_seconds_and_keeps_acquire_time(clock: Clock) -> None:
    store = Store()
    a = Replica(store, "a")
    a.e._try_take()
    acquired = store.spec()["acquireTime"]
    clock.t += RENEW - 0.1
    a.e._renew()
    assert store.writes == 1  # too early: no write
    clock.t += 0.1
    a.e._renew()
    assert store.writes == 2
    assert store.spec()["acquireTime"] == acquired
    assert store.spec()["renewTime"] != acquired
    assert store.spec()["leaseTransitions"] == 0
    assert a.e.is_leader() and a.elected == 1 and a.lost == 0


def test_the_standby_does_not_take_while_the_leader_renews(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    b.e._try_take()
    assert not b.e.is_leader()
    for _ in range(20):  # a minute: many lease durations, each renewed
        clock.t += RENEW
        a.e._renew()
        b.e._try_take()
        assert not b.e.is_leader()
    assert store.spec()["holderIdentity"] == "a"
    assert b.elected == 0


def test_the_standby_takes_over_after_a_silent_lease_duration_and_the_old_leader_steps_down(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    b.e._try_take()
    clock.t += RENEW
    a.e._renew()
    b.e._try_take()
    last_renewal = clock.t  # A renews no more from here on
    clock.t = last_renewal + DURATION - 0.5
    b.e._try_take()
    assert not b.e.is_leader()
    clock.t = last_renewal + DURATION
    b.e._try_take()
    assert b.e.is_leader()
    assert b.elected == 1
    spec = store.spec()
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert spec["acquireTime"] == spec["renewTime"]
    # A comes back: its renewal carries a stale resourceVersion, loses, and A steps down
    assert a.e.is_leader()
    a.e._renew()
    assert not a.e.is_leader()
    assert a.lost == 1
    assert a.e._held is None
    assert leader_gauge() == 0
    assert store.spec()["holderIdentity"] == "b"
    # and A, now the standby, does not take it back while B renews
    clock.t += RENEW
    b.e._renew()
    a.e._try_take()
    assert not a.e.is_leader()
    assert a.elected == 1


def test_the_standbys_clock_starts_when_it_sees_the_renewal(clock: Clock) -> None:
    """Never by comparing renewTime with its own wall clock: a Lease first seen late gets a whole
    duration from the sighting."""
    store = Store()
    a = Replica(store, "a")
    a.e._try_take()
    renewed = clock.t
    clock.t = renewed + 10  # B starts late, without a watch: it sees the Lease now
    b = Replica(store, "b", watch=False)
    b.e._try_take()
    assert not b.e.is_leader()
    clock.t = renewed + DURATION + 1  # a duration since A's write, but not since B saw it
    b.e._try_take()
    assert not b.e.is_leader()
    clock.t = renewed + 10 + DURATION
    b.e._try_take()
    assert b.e.is_leader()


def test_a_watch_event_restarts_the_standbys_clock(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    clock.t += DURATION - 1
    a.client.down = True  # A cannot renew through its client ...
    b.e._seen(store.write({**store.spec(), "renewTime": "renewed-by-a-elsewhere"}))  # ... but the Lease moved
    clock.t += DURATION - 1  # a duration since A took it, not since the last renewal
    b.e._try_take()
    assert not b.e.is_leader()


def test_release_lets_the_standby_take_at_once(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    b.e._try_take()
    clock.t += 1
    a.e.release()
    assert a.e.stop.is_set()
    assert not a.e.is_leader()
    spec = store.spec()
    assert spec["holderIdentity"] is None
    assert spec["leaseDurationSeconds"] == 1
    b.e._try_take()  # no waiting for a lease duration
    assert b.e.is_leader()
    assert b.elected == 1
    assert store.spec()["holderIdentity"] == "b"
    assert store.spec()["leaseTransitions"] == 1


def test_without_watch_events_the_standby_is_late_never_early(clock: Clock) -> None:
    """Without the watch, B GETs the Lease only once its last sighting is a duration old; a renewal
    it finds then restarts its clock (so a takeover comes 1-2 durations after A's last renewal), and
    a release is noticed at that GET too."""
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b", watch=False)
    a.e._try_take()
    b.e._try_take()  # B sees A's Lease through its own GET
    sighted = clock.t
    clock.t += RENEW
    a.e._renew()  # unseen by B
    last_renewal = clock.t
    clock.t = sighted + DURATION
    b.e._try_take()  # GETs, finds the renewal: its clock restarts now
    assert not b.e.is_leader()
    clock.t = last_renewal + DURATION  # a duration since A's renewal, but B saw it later
    b.e._try_take()
    assert not b.e.is_leader()
    clock.t = sighted + 2 * DURATION
    b.e._try_take()
    assert b.e.is_leader()
    assert b.elected == 1


def test_without_watch_events_a_release_is_seen_at_the_next_get(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b", watch=False)
    a.e._try_take()
    b.e._try_take()  # B has seen A's Lease
    a.e.release()
    b.e._try_take()  # its sighting is fresh: no GET yet
    assert not b.e.is_leader()
    clock.t += DURATION
    b.e._try_take()  # GETs, finds it released
    assert b.e.is_leader()


def test_release_by_a_standby_writes_nothing(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    writes = store.writes
    b.e.release()
    assert store.writes == writes
    assert store.spec()["holderIdentity"] == "a"
    assert b.e.stop.is_set()


def test_on_elected_once_per_takeover_and_transitions_count_takeovers(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    for _ in range(5):  # A leads a while: no new election, no transition
        clock.t += RENEW
        a.e._renew()
        b.e._try_take()
    assert (a.elected, b.elected, store.spec()["leaseTransitions"]) == (1, 0, 0)
    clock.t += DURATION  # A silent
    b.e._try_take()
    a.e._renew()  # loses
    assert (a.elected, b.elected, a.lost, store.spec()["leaseTransitions"]) == (1, 1, 1, 1)
    for _ in range(3):
        clock.t += RENEW
        b.e._renew()
        a.e._try_take()
    assert (a.elected, b.elected, store.spec()["leaseTransitions"]) == (1, 1, 1)
    b.e.release()
    a.e._try_take()
    assert (a.elected, b.elected, store.spec()["leaseTransitions"]) == (2, 1, 2)
    assert store.spec()["holderIdentity"] == "a"


def test_two_standbys_racing_for_a_new_lease_elect_one(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    b.client.after_get = a.e._try_take  # both saw no Lease; A creates it first
    b.e._try_take()
    assert a.e.is_leader() and not b.e.is_leader()
    assert (a.elected, b.elected) == (1, 0)


def test_two_standbys_racing_for_an_expired_lease_elect_one(clock: Clock) -> None:
    store = Store()
    a, b, c = Replica(store, "a"), Replica(store, "b"), Replica(store, "c")
    a.e._try_take()
    clock.t += DURATION  # A silent
    c.client.after_get = b.e._try_take  # C read the Lease; B writes before C does
    c.e._try_take()
    assert b.e.is_leader() and not c.e.is_leader()
    assert (b.elected, c.elected) == (1, 0)
    assert store.spec()["holderIdentity"] == "b"
    assert store.spec()["leaseTransitions"] == 1


def test_a_renewal_conflict_on_a_lease_still_ours_keeps_leading(clock: Clock) -> None:
    store = Store()
    a = Replica(store, "a")
    a.e._try_take()
    store.write(dict(store.spec()))  # the Lease changed under A (say, a label), still A's
    clock.t += RENEW
    a.e._renew()  # stale resourceVersion: loses, reads, finds itself the holder
    assert a.e.is_leader() and a.lost == 0
    writes = store.writes
    clock.t += RENEW
    a.e._renew()  # from the version it read: wins
    assert store.writes == writes + 1
    assert a.e.is_leader()


def test_a_deleted_lease_is_created_again_by_the_standby(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()
    store.lease = None
    b.e._seen(None)  # the watch: DELETED
    b.e._try_take()
    assert b.e.is_leader()
    clock.t += RENEW
    a.e._renew()  # A's update of a Lease that is gone (NotFound), then sees B's
    assert not a.e.is_leader() and a.lost == 1


def test_step_down_calls_on_lost(clock: Clock) -> None:
    store = Store()
    a = Replica(store, "a")
    a.e._try_take()
    a.e._step_down("test")
    assert not a.e.is_leader() and a.lost == 1 and a.e._held is None
    assert leader_gauge() == 0


# --- the loop, with a stop event that advances the fake clock instead of sleeping -------------

class TickingStop:
    """Stands in for Elector.stop: each wait() advances the clock by its timeout, until `end`."""

    def __init__(self, clock: Clock, end: float) -> None:
        self.clock = clock
        self.end = end

    def wait(self, timeout: float) -> bool:
        if self.clock.t + timeout > self.end:
            return True
        self.clock.t += timeout
        return False

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        pass


def test_a_leader_that_cannot_renew_steps_down_by_itself(clock: Clock) -> None:
    store = Store()
    a = Replica(store, "a")
    a.e._try_take()
    renewed = clock.t
    a.client.down = True
    a.e.stop = TickingStop(clock, renewed + DURATION - RENEW - 0.5)  # type: ignore[assignment]
    a.e._loop()
    assert a.e.is_leader()  # retrying, within its renew deadline
    a.e.stop = TickingStop(clock, renewed + DURATION - RENEW + 1)  # type: ignore[assignment]
    a.e._loop()
    assert not a.e.is_leader()
    assert a.lost == 1
    assert leader_gauge() == 0


def test_a_silent_leader_has_stepped_down_before_the_standby_may_take(clock: Clock) -> None:
    store = Store()
    a, b = Replica(store, "a"), Replica(store, "b")
    a.e._try_take()  # B's watch sees the write at the same instant A records its renewal
    renewed = clock.t
    a.client.down = True
    a.e.stop = TickingStop(clock, renewed + DURATION)  # type: ignore[assignment]
    a.e._loop()  # A's own loop, up to the instant B's clock runs out
    assert clock.t == renewed + DURATION
    b.e._try_take()
    assert b.e.is_leader()
    assert not a.e.is_leader(), "two leaders at once"
