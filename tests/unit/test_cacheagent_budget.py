"""NodeCache (cacheagent/cache.py) against a real directory store: the byte budget and LRU eviction,
never evicting what is served or filled, one fill per key however many ask, and a corrupt local
copy dropped and filled again. Threads where the agent has them; no network."""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

import pytest

from modeldeploy.artifact.dirstore import DirStore
from modeldeploy.artifact.errors import ArtifactNotBuilt
from modeldeploy.artifact.manifest import FileEntry
from modeldeploy.artifact.store import Digest
from modeldeploy.cacheagent.cache import FillPending, NodeCache, NoRoom, NotInManifest, TooLarge
from modeldeploy.cacheagent.metrics import AgentMetrics
from modeldeploy.cacheagent.verify import stream_verified
from modeldeploy.loader.errors import TransientFetchError
from tests.support.cacheagent import key_for, publish_artifact

KB = 1000


class CountingStore(DirStore):
    """A directory store that counts reads and can hold downloads at a gate (a slow store)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self.manifests = 0
        self.downloads: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def read_manifest(self, key: str) -> bytes | None:
        with self._lock:
            self.manifests += 1
        if self.fail is not None:
            raise self.fail
        return super().read_manifest(key)

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        assert self.gate.wait(20), "the test never opened the gate"
        with self._lock:
            self.downloads[f"{key}/{rel}"] += 1
        return super().download(key, rel, dest, size)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    (tmp_path / "store").mkdir()
    return CountingStore(tmp_path / "store")


def add(store: CountingStore, tmp_path: Path, name: str, size: int) -> tuple[str, int]:
    """Publish an artifact; its key and total size. The counters start again from zero."""
    key, manifest = publish_artifact(store, tmp_path, name, size, seed=name)
    store.manifests = 0
    store.downloads.clear()
    return key, manifest.total_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def new_cache(tmp_path: Path, store: CountingStore, max_bytes: int, **kw: float) -> tuple[NodeCache, AgentMetrics]:
    metrics = AgentMetrics()
    kw.setdefault("failure_hold_s", 0.0)  # these tests ask again at once
    cache = NodeCache(tmp_path / "cache", store, max_bytes, metrics, clock=Clock(), **kw)
    cache.start()
    return cache, metrics


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def on_disk(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def test_lru_eviction_keeps_within_the_budget(tmp_path: Path, store: CountingStore) -> None:
    a, sa = add(store, tmp_path, "a", 40 * KB)
    b, sb = add(store, tmp_path, "b", 40 * KB)
    c, sc = add(store, tmp_path, "c", 40 * KB)
    budget = sa + sb + 10  # two fit, three do not
    cache, metrics = new_cache(tmp_path, store, budget)
    cache.manifest(a)
    cache.manifest(b)
    cache.manifest(a)  # a used again: b is now the least recently used
    assert sample(metrics, "modeldeploy_cache_hits_total") == 1
    cache.manifest(c)
    assert cache.keys() == [a, c] and on_disk(tmp_path) == sorted([a, c])
    assert sample(metrics, "modeldeploy_cache_evictions_total") == 1
    assert sample(metrics, "modeldeploy_cache_evicted_bytes_total") == sb
    assert sample(metrics, "modeldeploy_cache_bytes") == sa + sc <= budget
    cache.manifest(b)  # back: a is the least recently used now
    assert cache.keys() == [c, b]
    assert cache.used_bytes <= budget
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 4
    assert sample(metrics, "modeldeploy_cache_misses_total") == 4


def test_an_artifact_being_served_is_never_evicted(tmp_path: Path, store: CountingStore) -> None:
    a, sa = add(store, tmp_path, "a", 40 * KB)
    b, sb = add(store, tmp_path, "b", 40 * KB)
    c, _ = add(store, tmp_path, "c", 40 * KB)
    cache, metrics = new_cache(tmp_path, store, sa + sb + 10)
    cache.manifest(a)
    cache.manifest(b)
    with cache.open_file(a, "1/model.onnx") as lease:  # a is the LRU, but a pod is reading it
        cache.manifest(c)
        assert cache.keys() == [a, c]  # b went instead
        data = lease.file.read()
    assert len(data) == 40 * KB
    with cache.open_file(a, "1/model.onnx"), cache.open_file(c, "config.pbtxt"):
        with pytest.raises(NoRoom, match="held by artifacts being served or filled"):
            cache.manifest(b)  # nothing evictable
        assert sample(metrics, "modeldeploy_cache_fills_total", result="no_room") == 1
    cache.manifest(b)  # both released: a is the LRU again
    assert cache.keys() == [c, b]


def test_an_artifact_larger_than_the_budget_is_never_cached(tmp_path: Path, store: CountingStore) -> None:
    big, size = add(store, tmp_path, "big", 100 * KB)
    cache, metrics = new_cache(tmp_path, store, size - 1)
    with pytest.raises(TooLarge, match="more than the cache's budget"):
        cache.manifest(big)
    assert sample(metrics, "modeldeploy_cache_fills_total", result="too_large") == 1
    assert on_disk(tmp_path) == [] and sum(store.downloads.values()) == 0


def test_fills_in_flight_hold_their_room(tmp_path: Path, store: CountingStore) -> None:
    a, sa = add(store, tmp_path, "a", 40 * KB)
    b, sb = add(store, tmp_path, "b", 40 * KB)
    c, _ = add(store, tmp_path, "c", 40 * KB)
    cache, metrics = new_cache(tmp_path, store, sa + sb + 10, fill_wait_s=0.05)
    store.gate.clear()  # the store is slow: a and b are being filled
    for key in (a, b):
        with pytest.raises(FillPending):
            cache.manifest(key)
    assert sample(metrics, "modeldeploy_cache_fills_in_progress") == 2
    with pytest.raises((NoRoom, FillPending)):
        cache.manifest(c)  # their reserved bytes leave no room, and neither may be evicted
    store.gate.set()
    cache.fill_wait_s = 10
    cache.manifest(a)
    cache.manifest(b)
    assert sorted(cache.keys()) == sorted([a, b]) and cache.used_bytes <= sa + sb + 10
    assert sample(metrics, "modeldeploy_cache_fills_total", result="no_room") == 1


def test_concurrent_requests_fill_once(tmp_path: Path, store: CountingStore) -> None:
    a, size = add(store, tmp_path, "a", 200 * KB)
    cache, metrics = new_cache(tmp_path, store, 10 * size)
    store.gate.clear()
    results: list[bytes | BaseException] = []

    def ask() -> None:
        try:
            results.append(cache.manifest(a))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    while sample(metrics, "modeldeploy_cache_misses_total") < 8:  # all eight are waiting on the fill
        threading.Event().wait(0.01)
    store.gate.set()
    for t in threads:
        t.join(20)
    assert len(results) == 8 and len({bytes(r) for r in results if isinstance(r, bytes)}) == 1, results
    assert store.manifests == 1 and dict(store.downloads) == {f"{a}/1/model.onnx": 1, f"{a}/config.pbtxt": 1}
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 1
    assert sample(metrics, "modeldeploy_cache_filled_bytes_total") == size


def test_a_slow_fill_goes_on_for_the_next_pod(tmp_path: Path, store: CountingStore) -> None:
    a, _ = add(store, tmp_path, "a", 10 * KB)
    cache, metrics = new_cache(tmp_path, store, 1 << 30, fill_wait_s=0.05)
    store.gate.clear()
    with pytest.raises(FillPending, match="being filled"):
        cache.manifest(a)  # this pod reads the store itself
    store.gate.set()
    cache.fill_wait_s = 10
    cache.manifest(a)
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 1
    assert sample(metrics, "modeldeploy_cache_misses_total") == 2


def test_store_answers_reach_every_waiter_and_are_not_cached(tmp_path: Path, store: CountingStore) -> None:
    a, _ = add(store, tmp_path, "a", 10 * KB)
    cache, metrics = new_cache(tmp_path, store, 1 << 30)
    with pytest.raises(ArtifactNotBuilt):
        cache.manifest(key_for("nothing", "here"))
    store.fail = TransientFetchError("store down")
    with pytest.raises(TransientFetchError, match="store down"):
        cache.manifest(a)
    store.fail = None
    assert cache.manifest(a)  # the next request tries the store again
    assert sample(metrics, "modeldeploy_cache_fills_total", result="not_built") == 1
    assert sample(metrics, "modeldeploy_cache_fills_total", result="store_error") == 1
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 1
    with pytest.raises(NotInManifest):
        cache.open_file(a, "2/model.onnx")


def test_a_failed_fill_is_answered_again_without_the_store_for_a_while(tmp_path: Path,
                                                                       store: CountingStore) -> None:
    a, _ = add(store, tmp_path, "a", 10 * KB)
    cache, metrics = new_cache(tmp_path, store, 1 << 30, failure_hold_s=0.3)
    store.fail = TransientFetchError("store down")
    for _ in range(3):  # a pod's manifest request, then one per file: one trip to the store
        with pytest.raises(TransientFetchError, match="store down"):
            cache.manifest(a)
        with pytest.raises(TransientFetchError, match="store down"):
            cache.open_file(a, "1/model.onnx")
    assert store.manifests == 1
    assert sample(metrics, "modeldeploy_cache_fills_total", result="store_error") == 1
    store.fail = None
    threading.Event().wait(0.35)
    assert cache.manifest(a)  # after the hold, the store is asked again
    assert store.manifests == 2


def test_a_changed_file_is_hashed_then_dropped_and_filled_again(tmp_path: Path, store: CountingStore) -> None:
    a, _ = add(store, tmp_path, "a", 30 * KB)
    cache, metrics = new_cache(tmp_path, store, 1 << 30)
    cache.manifest(a)
    path = tmp_path / "cache" / a / "model" / "1" / "model.onnx"
    good = path.read_bytes()
    path.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])  # same size, other bytes, new ctime
    with cache.open_file(a, "1/model.onnx") as lease:
        assert lease.file.read() == good  # from the refilled copy
    assert path.read_bytes() == good
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="corrupt") == 1
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 2
    assert store.downloads[f"{a}/1/model.onnx"] == 2
    os.utime(path, (1, 1))  # touched, bytes unchanged: hashed once, then trusted again
    with cache.open_file(a, "1/model.onnx"):
        pass
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="corrupt") == 1
    path.unlink()  # gone: dropped and filled again
    with cache.open_file(a, "1/model.onnx") as lease:
        assert lease.file.read() == good
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="corrupt") == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no leftovers


def test_stream_holds_back_the_last_chunk_until_the_file_matched() -> None:
    import hashlib
    import io

    data = b"x" * 2500
    want = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    out: list[bytes] = []
    assert stream_verified(io.BytesIO(data), out.append, want, chunk_size=1000) == (2500, None)
    assert b"".join(out) == data
    out.clear()
    bad = b"x" * 2499 + b"y"
    sent, problem = stream_verified(io.BytesIO(bad), out.append, want, chunk_size=1000)
    assert (sent, problem) == (2000, "sha256 does not match the manifest") and b"".join(out) == bad[:2000]
    out.clear()
    sent, problem = stream_verified(io.BytesIO(data[:1500]), out.append, want, chunk_size=1000)
    assert sent == 1000 and problem is not None and "size changed" in problem
    sent, problem = stream_verified(io.BytesIO(data + b"more"), out.append, want, chunk_size=1000)
    assert problem is not None and "size changed" in problem
    sent, problem = stream_verified(io.BytesIO(b"abc"), out.append, FileEntry(want.sha256, 3))
    assert sent == 0 and problem  # a file of one chunk: nothing at all is sent
