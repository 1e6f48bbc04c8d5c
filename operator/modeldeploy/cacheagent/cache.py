"""The node's artifact cache: hits from the directory, one fill per key on a miss, LRU within a budget.

Three rules keep it correct while many pods ask at once:

- **Single flight.** A miss starts at most one fill per key; every request for that key waits on
  it (up to `fill_wait_s`, below the pod's own timeout for the agent: a pod that waited longer
  would give up on us anyway, so it is told "not yet" and reads the store itself while the fill
  goes on for the pods after it).
- **Never over budget.** A fill reserves its size before it downloads a byte, evicting
  least-recently-used artifacts first; artifacts being served or filled are never evicted. If
  that cannot make room (or one artifact is larger than the whole budget) the fill is refused and
  the pod reads the store.
- **A failure is not retried at once.** A fill that failed (store down, refusing, not built)
  answers every request for that key with the same error for a few seconds (`failure_hold_s`),
  so a pod whose fetch falls back to the store is not held up once per file, and a broken store
  is not hammered.
- **Never unverified bytes.** A file is served only while its stat is the one it had when its
  bytes were checked, else it is hashed first; and every response is hashed as it streams, its
  last chunk held back until the whole file matched. A copy found wrong is discarded (renamed
  away: pods still reading it keep their open files) and the next request fills it again.

The lock guards only the index (a dict) and renames; no network or hashing happens under it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from ..artifact.errors import ArtifactCorrupt, ArtifactNotBuilt
from ..artifact.manifest import FileEntry
from ..artifact.store import ArtifactReader, check_key, check_rel
from ..loader.errors import LoaderError
from ..loader.limits import human
from . import disk, fill
from .lru import Candidate, choose_victims, over_budget_victims
from .metrics import AgentMetrics
from .verify import file_problem

log: Final = logging.getLogger("modeldeploy.cacheagent")
OPEN_ATTEMPTS: Final = 3  # a corrupt copy is dropped and filled again; a second one in a row gives up
# A failed fill's answer is repeated, without asking the store again, for this long: the rest of
# that pod's requests (one per file) fail at once instead of each retrying a store that just failed.
FAILURE_HOLD_SECONDS: Final = 5.0


class AgentError(Exception):
    """A request the agent cannot answer from its copy; `status` is the HTTP answer. The pod then
    reads the store itself (the fetch side treats every failure of the agent alike)."""

    status = 503


class FillPending(AgentError):
    """The fill did not finish within fill_wait_s; it goes on for the pods after this one."""


class NoRoom(AgentError):
    """The artifact does not fit in the budget, even after evicting everything not in use."""


class TooLarge(NoRoom):
    """The artifact is larger than the whole budget: it is never cached."""


class NotInManifest(AgentError):
    """A file the manifest does not list: no artifact has it."""

    status = 404


@dataclass
class _Entry:
    """A copy in the index, and how many responses are reading it now."""

    copy: disk.Copy
    users: int = 0


@dataclass
class _Flight:
    """A fill in progress that requests for the key wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Lease:
    """An open, checked file of a cached artifact. The artifact is not evicted until it is closed."""

    def __init__(self, cache: NodeCache, key: str, rel: str, want: FileEntry, file: BinaryIO, entry: _Entry) -> None:
        self.key, self.rel, self.want, self.file = key, rel, want, file
        self._cache, self._entry = cache, entry

    def corrupt(self, problem: str) -> None:
        """The bytes did not match while streaming: discard this copy (not a newer one)."""
        self._cache._drop_corrupt(self.key, self._entry, f"{self.rel}: {problem}")

    def close(self) -> None:
        self.file.close()
        self._cache._release(self._entry)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fill_result(error: BaseException | None) -> str:
    """The `result` label of a fill that ended with `error` (None: it filled)."""
    if error is None:
        return "filled"
    if isinstance(error, ArtifactNotBuilt):
        return "not_built"
    if isinstance(error, TooLarge):
        return "too_large"
    if isinstance(error, NoRoom):
        return "no_room"
    if isinstance(error, ArtifactCorrupt):
        return "corrupt_in_store"
    if isinstance(error, LoaderError):  # unreachable, refused, misconfigured
        return "store_error"
    return "error"  # a local failure (a full disk, a bug): the log says which


def _again(error: BaseException) -> BaseException:
    """A fresh copy of a fill's error for one more waiter (threads must not share a traceback)."""
    return copy.copy(error).with_traceback(None)


class NodeCache:
    """The index of the cache directory, its fills and its budget (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        store: ArtifactReader,
        max_bytes: int,
        metrics: AgentMetrics,
        *,
        fill_wait_s: float = 8.0,
        failure_hold_s: float = FAILURE_HOLD_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root, self.store, self.max_bytes, self.metrics = root, store, max_bytes, metrics
        self.fill_wait_s, self.failure_hold_s = fill_wait_s, failure_hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._flights: dict[str, _Flight] = {}
        self._reserved: dict[str, int] = {}  # bytes a running fill will add, by key
        self._failed: dict[str, tuple[float, BaseException]] = {}  # key -> (monotonic deadline, error)
        metrics.max_bytes.set(max_bytes)

    # ------------------------------------------------------------------ start

    def start(self) -> disk.Rebuilt:
        """Rebuild the index from the directory (after a restart), then get under the budget."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = disk.rebuild(self.root)
        for name in found.partial:
            log.info("dropped %s: a fill or deletion cut short by the last stop", name)
        for key, why in found.invalid:
            log.warning("dropped the copy of %s: %s", key, why)
        for name in found.ignored:
            log.warning("ignoring %s in %s: not a cache entry (is the hostPath right?)", name, self.root)
        self.metrics.dropped.labels(reason="partial").inc(len(found.partial))
        self.metrics.dropped.labels(reason="invalid").inc(len(found.invalid))
        with self._lock:
            self._entries = {c.key: _Entry(c) for c in found.copies}
            victims = over_budget_victims(self._candidates(), used=self._used(), budget=self.max_bytes)
            trash = [self._evict(k) for k in victims]
            self._update_gauges()
        self._remove(trash)
        log.info("cache %s: %d artifacts, %s of %s", self.root, len(self._entries), human(self.used_bytes),
                 human(self.max_bytes))
        return found

    # ------------------------------------------------------------------ requests

    def manifest(self, key: str) -> bytes:
        """The manifest of `key` from a verified-complete copy, filling it first on a miss."""
        check_key(key)
        missed = False
        for _ in range(OPEN_ATTEMPTS):
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._touch(entry)
                    if not missed:
                        self.metrics.hits.inc()
                    return entry.copy.manifest_bytes
                flight = self._join_or_start(key)
            if not missed:
                self.metrics.misses.inc()
                missed = True
            self._wait(key, flight)
        raise FillPending(f"artifact {key} was evicted as soon as it was filled; the budget is too small")

    def open_file(self, key: str, rel: str) -> Lease:
        """An open, checked file of the copy of `key` (filled first on a miss). The caller streams
        it with stream_verified and closes the lease."""
        check_key(key)
        check_rel(rel)
        for _ in range(OPEN_ATTEMPTS):
            trash: Path | None = None
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    flight: _Flight | None = self._join_or_start(key)
                else:
                    flight = None
                    want = entry.copy.manifest.files.get(rel)
                    if want is None:
                        raise NotInManifest(f"artifact {key} has no file {rel}")
                    try:
                        f: BinaryIO | None = os.fdopen(
                            os.open(disk.model_path(self.root, key, rel), os.O_RDONLY | os.O_NOFOLLOW), "rb")
                    except OSError as e:
                        f = None
                        trash = self._discard_corrupt(key, entry, f"{rel}: cannot open it ({e.strerror})")
                    else:
                        entry.users += 1
            if flight is not None:
                self._wait(key, flight)
                continue
            if f is None:
                self._remove([trash])
                continue
            problem = self._check(entry, rel, want, f)
            if problem is None:
                return Lease(self, key, rel, want, f, entry)
            f.close()
            self._release(entry)
            self._drop_corrupt(key, entry, f"{rel}: {problem}")
        raise FillPending(f"artifact {key}: the cached copy of {rel} kept failing its check")

    # ------------------------------------------------------------------ facts

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def keys(self) -> list[str]:
        """Cached artifacts, least recently used first."""
        with self._lock:
            return [e.copy.key for e in sorted(self._entries.values(), key=lambda e: (e.copy.last_used, e.copy.key))]

    # ------------------------------------------------------------------ internals (the lock held: _name)

    def _used(self) -> int:
        return sum(e.copy.size for e in self._entries.values()) + sum(self._reserved.values())

    def _candidates(self) -> list[Candidate]:
        return [Candidate(k, e.copy.size, e.copy.last_used, in_use=e.users > 0) for k, e in self._entries.items()]

    def _update_gauges(self) -> None:
        self.metrics.bytes.set(sum(e.copy.size for e in self._entries.values()))
        self.metrics.artifacts.set(len(self._entries))
        self.metrics.fills_in_progress.set(len(self._flights))

    def _touch(self, entry: _Entry) -> None:
        entry.copy.last_used = self._clock()
        with contextlib.suppress(OSError):  # the order in memory is what counts; this keeps it over a restart
            os.utime(disk.artifact_dir(self.root, entry.copy.key), (entry.copy.last_used, entry.copy.last_used))

    def _evict(self, key: str) -> Path | None:
        entry = self._entries.pop(key)
        self.metrics.evictions.inc()
        self.metrics.evicted_bytes.inc(entry.copy.size)
        log.info("evicted %s (%s, last used %.0fs ago) to stay within %s", key, human(entry.copy.size),
                 self._clock() - entry.copy.last_used, human(self.max_bytes))
        return disk.discard(self.root, key)

    def _discard_corrupt(self, key: str, entry: _Entry, problem: str) -> Path | None:
        if self._entries.get(key) is not entry:
            return None  # already replaced or dropped by another request
        del self._entries[key]
        self.metrics.dropped.labels(reason="corrupt").inc()
        self._update_gauges()
        log.warning("dropped the copy of %s: %s; the next request fills it again", key, problem)
        return disk.discard(self.root, key)

    def _join_or_start(self, key: str) -> _Flight:
        flight = self._flights.get(key)
        if flight is None and (failed := self._failed.get(key)) is not None:
            if time.monotonic() < failed[0]:
                raise _again(failed[1])
            del self._failed[key]
        if flight is None:
            flight = self._flights[key] = _Flight()
            self._update_gauges()
            threading.Thread(target=self._run_fill, args=(key, flight), name=f"fill-{key}", daemon=True).start()
        return flight

    # ------------------------------------------------------------------ internals (no lock held)

    def _remove(self, paths: list[Path | None]) -> None:
        for p in paths:
            if p is not None:
                disk.remove_tree(p)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1

    def _drop_corrupt(self, key: str, entry: _Entry, problem: str) -> None:
        with self._lock:
            trash = self._discard_corrupt(key, entry, problem)
        self._remove([trash])

    def _check(self, entry: _Entry, rel: str, want: FileEntry, f: BinaryIO) -> str | None:
        """Why the open file may not be served, or None. Hashes it unless its stat is the one it
        had when it was last found good."""
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != want.size:
            return f"size {st.st_size}, manifest says {want.size}"
        sig = disk.Sig.of(st)
        if entry.copy.trusted.get(rel) == sig:
            return None
        if problem := file_problem(f, want):
            return problem
        with self._lock:
            entry.copy.trusted[rel] = sig
        return None

    def _wait(self, key: str, flight: _Flight) -> None:
        if not flight.done.wait(self.fill_wait_s):
            raise FillPending(f"artifact {key} is being filled from the store; not ready within "
                              f"{self.fill_wait_s:g}s")
        if flight.error is not None:
            raise _again(flight.error)

    def _run_fill(self, key: str, flight: _Flight) -> None:
        started = time.monotonic()
        try:
            downloaded = self._fill(key)
        except BaseException as e:  # handed to every waiter, and held for failure_hold_s
            flight.error = e
            level = logging.INFO if isinstance(e, ArtifactNotBuilt) else logging.WARNING
            log.log(level, "fill of %s failed: %s", key, e)
        else:
            log.info("filled %s from the store: %s in %.2fs", key, human(downloaded), time.monotonic() - started)
        finally:
            self.metrics.fills.labels(result=fill_result(flight.error)).inc()
            with self._lock:
                self._flights.pop(key, None)
                if flight.error is None:
                    self._failed.pop(key, None)
                else:
                    self._failed[key] = (time.monotonic() + self.failure_hold_s, flight.error)
                self._update_gauges()
            flight.done.set()

    def _fill(self, key: str) -> int:
        """Fill `key` into place; the bytes downloaded."""
        wanted = fill.read_wanted(self.store, key)
        size = wanted.manifest.total_bytes
        if size > self.max_bytes:
            raise TooLarge(f"artifact {key} holds {human(size)}, more than the cache's budget "
                           f"{human(self.max_bytes)} (MD_CACHE_MAX_BYTES)")
        with self._lock:
            victims = choose_victims(self._candidates(), used=self._used(), incoming=size, budget=self.max_bytes)
            if victims is None:
                raise NoRoom(f"artifact {key} ({human(size)}) does not fit: {human(self._used())} of "
                             f"{human(self.max_bytes)} are held by artifacts being served or filled")
            trash = [self._evict(k) for k in victims]
            self._reserved[key] = size
            self._update_gauges()
        self._remove(trash)
        staged: fill.Staged | None = None
        try:
            staged = fill.stage(self.store, self.root, key, wanted)
            now = self._clock()
            with contextlib.suppress(OSError):
                os.utime(staged.path, (now, now))  # last used: now (the order a restart reads back)
            with self._lock:  # one step: the reservation becomes the entry
                stale = disk.discard(self.root, key)  # nothing should be there; never rename onto a tree
                os.rename(staged.path, disk.artifact_dir(self.root, key))
                del self._reserved[key]
                self._entries[key] = _Entry(disk.Copy(key=key, manifest=wanted.manifest, manifest_bytes=wanted.data,
                                                      trusted=dict(staged.sigs), last_used=now))
                self._update_gauges()
        except BaseException:
            with self._lock:
                self._reserved.pop(key, None)
                self._update_gauges()
            if staged is not None:
                disk.remove_tree(staged.path)  # not renamed: never visible under the key
            raise
        self._remove([stale])
        self.metrics.filled_bytes.inc(staged.downloaded)
        return staged.downloaded
