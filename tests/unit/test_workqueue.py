"""The de-duplicating work queue: once per burst, once more after a running pass, never twice at once.

Real threads, but every wait is on an Event or a short poll, so each test takes milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from modeldeploy.workqueue import WorkQueue

WAIT = 2.0  # the most any event is waited for; a passing test never waits this long


def until(cond: Callable[[], bool], timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    return cond()


@pytest.fixture
def queues() -> Iterator[list[WorkQueue]]:
    made: list[WorkQueue] = []
    yield made
    for q in made:
        q.stop()


class Recorder:
    """A handler that counts calls per key, and can hold a key's pass until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.active: Counter[tuple[str, str]] = Counter()
        self.max_active: Counter[tuple[str, str]] = Counter()
        self.started: dict[tuple[str, str], threading.Event] = {}
        self.gates: dict[tuple[str, str], threading.Event] = {}

    def hold(self, namespace: str, name: str) -> tuple[threading.Event, threading.Event]:
        """(started, gate): the key's next passes signal `started` and wait for `gate`."""
        started, gate = threading.Event(), threading.Event()
        self.started[(namespace, name)] = started
        self.gates[(namespace, name)] = gate
        return started, gate

    def __call__(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self.lock:
            self.calls[key] += 1
            self.active[key] += 1
            self.max_active[key] = max(self.max_active[key], self.active[key])
        try:
            if key in self.started:
                self.started[key].set()
                assert self.gates[key].wait(WAIT), "test gate never opened"
        finally:
            with self.lock:
                self.active[key] -= 1


def test_a_key_added_many_times_while_queued_runs_once(queues: list[WorkQueue]) -> None:
    rec = Recorder()
    started, gate = rec.hold("ns", "blocker")
    q = WorkQueue(rec, workers=1)
    queues.append(q)
    q.add("ns", "blocker")
    assert started.wait(WAIT)  # the only worker is busy: what follows stays queued
    for _ in range(20):
        q.add("ns", "m")
    assert q.depth() == 2
    gate.set()
    assert until(lambda: q.depth() == 0)
    assert rec.calls[("ns", "m")] == 1
    assert rec.calls[("ns", "blocker")] == 1


def test_a_key_added_while_running_runs_exactly_once_more(queues: list[WorkQueue]) -> None:
    rec = Recorder()
    started, gate = rec.hold("ns", "m")
    q = WorkQueue(rec, workers=3)
    queues.append(q)
    q.add("ns", "m")
    assert started.wait(WAIT)
    for _ in range(10):
        q.add("ns", "m")
    assert q.depth() == 1  # running; the re-add waits for it, it is not queued beside it
    time.sleep(0.02)  # idle workers had the chance to pick up a second copy: none may
    assert rec.calls[("ns", "m")] == 1
    gate.set()
    assert until(lambda: rec.calls[("ns", "m")] == 2 and q.depth() == 0)
    time.sleep(0.02)
    assert rec.calls[("ns", "m")] == 2
    assert rec.max_active[("ns", "m")] == 1


def test_a_key_added_after_its_pass_finished_runs_again(queues: list[WorkQueue]) -> None:
    rec = Recorder()
    q = WorkQueue(rec, workers=2)
    queues.append(q)
    q.add("ns", "m")
    assert until(lambda: rec.calls[("ns", "m")] == 1 and q.depth() == 0)
    q.add("ns", "m")
    assert until(lambda: rec.calls[("ns", "m")] == 2 and q.depth() == 0)


def test_the_same_key_never_runs_in_two_workers_at_once(queues: list[WorkQueue]) -> None:
    rec = Recorder()

    def slow(namespace: str, name: str) -> None:
        rec(namespace, name)
        time.sleep(0.001)

    q = WorkQueue(slow, workers=4)
    queues.append(q)

    def hammer() -> None:
        for i in range(200):
            q.add("ns", f"m{i % 3}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert until(lambda: q.depth() == 0)
    for key in [("ns", "m0"), ("ns", "m1"), ("ns", "m2")]:
        assert rec.calls[key] >= 1
        assert rec.max_active[key] == 1, key


def test_different_keys_run_concurrently(queues: list[WorkQueue]) -> None:
    both = threading.Barrier(2, timeout=WAIT)
    met: list[str] = []

    def handle(namespace: str, name: str) -> None:
        both.wait()  # only returns when the other key's pass is running at the same time
        met.append(name)

    q = WorkQueue(handle, workers=2)
    queues.append(q)
    q.add("ns", "a")
    q.add("ns", "b")
    assert until(lambda: len(met) == 2)
    assert sorted(met) == ["a", "b"]


def test_an_exception_in_a_pass_does_not_kill_the_worker(queues: list[WorkQueue]) -> None:
    ran: list[str] = []

    def handle(namespace: str, name: str) -> None:
        ran.append(name)
        if name.startswith("bad"):
            raise RuntimeError("the pass failed")

    q = WorkQueue(handle, workers=1)
    queues.append(q)
    q.add("ns", "bad")
    q.add("ns", "good")
    assert until(lambda: ran == ["bad", "good"] and q.depth() == 0)
    q.add("ns", "bad")  # the failed key can be queued again
    q.add("ns", "bad2")
    q.add("ns", "after")
    assert until(lambda: ran[2:] == ["bad", "bad2", "after"] and q.depth() == 0)


def test_an_exception_does_not_lose_a_re_add_made_during_the_pass(queues: list[WorkQueue]) -> None:
    calls: list[int] = []
    q: WorkQueue

    def handle(namespace: str, name: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            q.add(namespace, name)  # an event during the pass
            raise RuntimeError("boom")

    q = WorkQueue(handle, workers=2)
    queues.append(q)
    q.add("ns", "m")
    assert until(lambda: len(calls) == 2 and q.depth() == 0)


def test_depth_counts_queued_and_running_keys_once(queues: list[WorkQueue]) -> None:
    rec = Recorder()
    started, gate = rec.hold("ns", "a")
    q = WorkQueue(rec, workers=1)
    queues.append(q)
    assert q.depth() == 0
    q.add("ns", "a")
    assert started.wait(WAIT)
    assert q.depth() == 1
    q.add("ns", "b")
    q.add("other", "b")  # another namespace: another key
    q.add("ns", "b")
    assert q.depth() == 3
    q.add("ns", "a")  # running: waits for it, not counted twice
    assert q.depth() == 3
    gate.set()
    assert until(lambda: q.depth() == 0)
    assert rec.calls == Counter({("ns", "a"): 2, ("ns", "b"): 1, ("other", "b"): 1})


def test_stop_ends_the_workers_and_runs_nothing_more(queues: list[WorkQueue]) -> None:
    rec = Recorder()
    started, gate = rec.hold("ns", "running")
    q = WorkQueue(rec, workers=2)
    queues.append(q)
    q.add("ns", "running")
    assert started.wait(WAIT)
    q.stop()
    q.add("ns", "late")  # accepted, never run
    gate.set()  # the pass that was running finishes
    for t in q._threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert rec.calls == Counter({("ns", "running"): 1})


def test_stop_on_an_idle_queue_ends_every_worker(queues: list[WorkQueue]) -> None:
    q = WorkQueue(lambda ns, name: None, workers=3, name="idle")
    queues.append(q)
    assert [t.name for t in q._threads] == ["idle-0", "idle-1", "idle-2"]
    q.stop()
    for t in q._threads:
        t.join(WAIT)
        assert not t.is_alive()


class Order:
    """A handler that records the order keys ran in."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.order: list[str] = []

    def __call__(self, namespace: str, name: str) -> None:
        self.order.append(name)
        self.rec(namespace, name)


def _one_worker_busy_with(queues: list[WorkQueue], key: str, urgent: bool = True,
                          ) -> tuple[WorkQueue, Order, Recorder, threading.Event]:
    """A one-worker queue whose worker is held in `key`'s pass: (queue, order, recorder, gate)."""
    rec = Recorder()
    started, gate = rec.hold("ns", key)
    handler = Order(rec)
    q = WorkQueue(handler, workers=1)
    queues.append(q)
    (q.add if urgent else q.add_later)("ns", key)
    assert started.wait(WAIT)
    return q, handler, rec, gate


def test_events_run_before_a_sweep_queued_earlier(queues: list[WorkQueue]) -> None:
    q, handler, rec, gate = _one_worker_busy_with(queues, "blocker")
    for i in range(50):
        q.add_later("ns", f"sweep-{i}")  # a relist queues every model
    q.add("ns", "ready")  # a pod became Ready
    q.add_later("ns", "ready")  # a sweep never demotes a queued event
    q.add("ns", "sweep-7")  # an event for a key the sweep queued: it moves up, still once
    assert q.depth() == 1 + 51
    gate.set()
    assert until(lambda: q.depth() == 0)
    assert handler.order[:3] == ["blocker", "ready", "sweep-7"]
    assert sorted(handler.order[3:]) == sorted(f"sweep-{i}" for i in range(50) if i != 7)
    assert handler.order[3:] == [f"sweep-{i}" for i in range(50) if i != 7]  # the sweep keeps its order
    assert all(n == 1 for n in rec.calls.values())


def test_an_event_during_a_pass_queued_later_runs_it_again_soon(queues: list[WorkQueue]) -> None:
    q, handler, _, gate = _one_worker_busy_with(queues, "m", urgent=False)
    q.add_later("ns", "other")
    q.add("ns", "m")  # changed while its sweep pass ran: once more, ahead of the sweep
    gate.set()
    assert until(lambda: q.depth() == 0)
    assert handler.order == ["m", "m", "other"]
