"""The cache directory after a restart (cacheagent/disk.py, NodeCache.start): complete copies are kept
with their LRU order, partial fills and broken copies are deleted, anything not the agent's is left
alone, and the budget is applied. Real files, a real directory store, no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modeldeploy.artifact.dirstore import DirStore
from modeldeploy.cacheagent import disk
from modeldeploy.cacheagent.cache import NodeCache
from modeldeploy.cacheagent.metrics import AgentMetrics
from tests.support.cacheagent import publish_artifact

SIZES = {"alpha": 3000, "beta": 5000, "gamma": 7000}


@pytest.fixture
def store(tmp_path: Path) -> tuple[DirStore, dict[str, str]]:
    """A directory store with three artifacts; their keys by name."""
    root = tmp_path / "store"
    root.mkdir()
    s = DirStore(root)
    keys = {name: publish_artifact(s, tmp_path, name, size, seed=name)[0] for name, size in SIZES.items()}
    return s, keys


def filled(tmp_path: Path, store: DirStore, keys: list[str], max_bytes: int = 1 << 30) -> Path:
    """A cache directory holding `keys`, filled by an agent that then went away; key i last used at t=1000+i."""
    cache_dir = tmp_path / "cache"
    cache = NodeCache(cache_dir, store, max_bytes, AgentMetrics())
    cache.start()
    for i, key in enumerate(keys):
        cache.manifest(key)
        os.utime(cache_dir / key, (1000 + i, 1000 + i))
    return cache_dir


def restart(cache_dir: Path, store: DirStore, max_bytes: int = 1 << 30) -> tuple[NodeCache, AgentMetrics]:
    metrics = AgentMetrics()
    cache = NodeCache(cache_dir, store, max_bytes, metrics)
    cache.start()
    return cache, metrics


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_complete_copies_survive_a_restart_in_lru_order(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    order = [keys["beta"], keys["alpha"], keys["gamma"]]
    cache_dir = filled(tmp_path, s, order)
    cache, metrics = restart(cache_dir, s)
    assert cache.keys() == order  # least recently used first, from the directories' mtimes
    assert cache.used_bytes == sum(SIZES.values()) + sum(len(f'name: "{n}"\n# {n}\n') for n in SIZES)
    assert sample(metrics, "modeldeploy_cache_artifacts") == 3
    assert sample(metrics, "modeldeploy_cache_bytes") == cache.used_bytes
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="partial") == 0
    # served without going to the store: the store can vanish
    data = cache.manifest(keys["alpha"])
    assert json.loads(data)["key"] == keys["alpha"]
    assert sample(metrics, "modeldeploy_cache_hits_total") == 1
    assert sample(metrics, "modeldeploy_cache_fills_total", result="filled") == 0


def test_partial_fills_and_discarded_copies_are_deleted(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    cache_dir = filled(tmp_path, s, [keys["alpha"]])
    partial = cache_dir / f".fill-{keys['beta']}-0123456789ab"
    (partial / "model" / "1").mkdir(parents=True)
    (partial / "model" / "1" / "model.onnx").write_bytes(b"half of it")  # killed mid-download
    trash = cache_dir / f".drop-{keys['gamma']}-0123456789ab"
    (trash / "model").mkdir(parents=True)
    (trash / "manifest.json").write_text("{}")
    cache, metrics = restart(cache_dir, s)
    assert sorted(p.name for p in cache_dir.iterdir()) == [keys["alpha"]]
    assert cache.keys() == [keys["alpha"]]
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="partial") == 2


def test_broken_copies_are_deleted(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    a, b, g = keys["alpha"], keys["beta"], keys["gamma"]
    cache_dir = filled(tmp_path, s, [a, b, g])
    (cache_dir / a / "manifest.json").unlink()  # no commit marker
    (cache_dir / b / "model" / "1" / "model.onnx").write_bytes(b"short")  # wrong size
    (cache_dir / g / "model" / "extra.txt").write_text("not in the manifest")
    other = publish_artifact(s, tmp_path, "delta", 10, seed="delta")[0]
    wrong = cache_dir / other  # a manifest of another key
    (wrong / "model").mkdir(parents=True)
    (wrong / "manifest.json").write_bytes((cache_dir / g / "manifest.json").read_bytes())
    found = disk.rebuild(cache_dir)
    assert found.copies == []
    reasons = dict(found.invalid)
    assert set(reasons) == {a, b, g, other}
    assert "no manifest" in reasons[a] and "size 5" in reasons[b] and "not in the manifest" in reasons[g]
    assert "describes" in reasons[other]
    assert list(cache_dir.iterdir()) == []


def test_links_are_never_followed(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    a, b = keys["alpha"], keys["beta"]
    cache_dir = filled(tmp_path, s, [a])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (cache_dir / b).symlink_to(outside, target_is_directory=True)  # a key that is a link
    model = cache_dir / a / "model" / "1" / "model.onnx"
    model.unlink()
    model.symlink_to(outside / "precious")
    cache, metrics = restart(cache_dir, s)
    assert cache.keys() == [] and list(cache_dir.iterdir()) == []
    assert (outside / "precious").read_text() == "keep me"
    assert sample(metrics, "modeldeploy_cache_dropped_total", reason="invalid") == 2


def test_what_is_not_the_agents_is_left_alone(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    cache_dir = filled(tmp_path, s, [keys["alpha"]])
    (cache_dir / "lost+found").mkdir()
    (cache_dir / "README").write_text("someone's notes")
    found = disk.rebuild(cache_dir)
    assert [c.key for c in found.copies] == [keys["alpha"]]
    assert sorted(found.ignored) == ["README", "lost+found"]
    assert (cache_dir / "README").exists() and (cache_dir / "lost+found").is_dir()


def test_a_lower_budget_evicts_lru_at_start(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    cache_dir = filled(tmp_path, s, [keys["gamma"], keys["alpha"], keys["beta"]])  # gamma least recent
    cache, metrics = restart(cache_dir, s, max_bytes=9000)
    assert cache.keys() == [keys["alpha"], keys["beta"]]  # gamma (7000) goes: 15000+ -> 8000+
    assert sample(metrics, "modeldeploy_cache_evictions_total") == 1 and cache.used_bytes <= 9000
    cache, metrics = restart(cache_dir, s, max_bytes=6000)
    assert cache.keys() == [keys["beta"]]  # then alpha (3000): 5000+
    assert sorted(p.name for p in cache_dir.iterdir()) == [keys["beta"]]
    assert sample(metrics, "modeldeploy_cache_evictions_total") == 1 and cache.used_bytes <= 6000


def test_signatures_let_a_restart_trust_untouched_files(tmp_path: Path, store: tuple[DirStore, dict]) -> None:
    s, keys = store
    a = keys["alpha"]
    cache_dir = filled(tmp_path, s, [a])
    sigs = disk.read_signatures(cache_dir / a / disk.SIGNATURES_FILE)
    assert set(sigs) == {"1/model.onnx", "config.pbtxt"}
    assert sigs["1/model.onnx"] == disk.Sig.of(os.stat(cache_dir / a / "model" / "1" / "model.onnx"))
    copy = disk.load_copy(cache_dir, a)
    assert isinstance(copy, disk.Copy) and copy.trusted == sigs
    (cache_dir / a / disk.SIGNATURES_FILE).write_text("not json")
    copy = disk.load_copy(cache_dir, a)
    assert isinstance(copy, disk.Copy) and copy.trusted == {}  # still served: each file hashed first
