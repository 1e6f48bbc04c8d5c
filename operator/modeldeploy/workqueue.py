"""A de-duplicating work queue: each ModelDeployment is queued at most once, whatever the burst.

Why: at start-up the watches deliver every ModelDeployment, Deployment, Pod, Service, PDB and
NetworkPolicy, about eight events per model; each names the same model. Queued once, the model
gets one pass. An event that arrives while its model's pass runs queues exactly one more pass
after it (client-go's workqueue does the same), so no change is missed and no pass runs twice at
once. Event handlers only enqueue, so a slow pass never holds up the watch streams.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class WorkQueue:
    """`add` from any thread; `workers` threads call `handle(namespace, name)` one key at a time.

    Two lanes: `add` (a watch event, a canary's or the autoscaler's tick: something changed or is
    due now) goes before `add_later` (the timed resync, the safety relist, a new leader's sweep:
    passes that usually find nothing to do). Without the lanes a relist that queues every model
    put a pod's Ready event behind thousands of no-op passes: at 5000 models the leader's queue
    held 4970 keys and Ready models waited minutes to say so. A key queued later and then added
    now moves up; a key is still queued at most once.
    """

    def __init__(self, handle: Callable[[str, str], object], workers: int = 4, name: str = "pass") -> None:
        self._handle = handle
        self._cond = threading.Condition()
        self._now: collections.deque[Key] = collections.deque()
        self._later: collections.deque[Key] = collections.deque()
        self._queued: dict[Key, bool] = {}  # key -> queued in the urgent lane
        self._running: set[Key] = set()
        self._again: dict[Key, bool] = {}  # added while running: queue once more after, urgent or not
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def add(self, namespace: str, name: str) -> None:
        """Queue a pass soon: something about the model changed or is due."""
        self._add((namespace, name), urgent=True)

    def add_later(self, namespace: str, name: str) -> None:
        """Queue a pass after every urgent one: a sweep that rarely finds anything to do."""
        self._add((namespace, name), urgent=False)

    def _add(self, key: Key, urgent: bool) -> None:
        with self._cond:
            if key in self._running:
                self._again[key] = self._again.get(key, False) or urgent
                return
            self._enqueue(key, urgent)

    def _enqueue(self, key: Key, urgent: bool) -> None:
        """Queue `key` in its lane unless it is queued in this lane or a faster one (lock held)."""
        queued = self._queued.get(key)
        if queued is not None and (queued or not urgent):
            return
        self._queued[key] = urgent
        (self._now if urgent else self._later).append(key)  # a promoted key's old entry is skipped
        self._cond.notify()

    def depth(self) -> int:
        with self._cond:
            return len(self._queued) + len(self._running)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _next(self) -> Key | None:
        """The next queued key, urgent lane first; stale entries (promoted keys) are dropped."""
        for lane, urgent in ((self._now, True), (self._later, False)):
            while lane:
                key = lane.popleft()
                if self._queued.get(key) is urgent:
                    del self._queued[key]
                    return key
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                key = None
                while not self._stopped and (key := self._next()) is None:
                    self._cond.wait()
                if self._stopped or key is None:
                    return
                self._running.add(key)
            try:
                self._handle(*key)
            except Exception as e:  # the reconciler logs and schedules its own retry
                log.debug("pass for %s/%s raised: %s", key[0], key[1], e)
            finally:
                with self._cond:
                    self._running.discard(key)
                    if key in self._again:
                        self._enqueue(key, self._again.pop(key))
