"""LRU eviction choice (cacheagent/lru.py): pure, so checked case by case and against random caches."""

from __future__ import annotations

import random

from modeldeploy.cacheagent.lru import Candidate, choose_victims, lru_order, over_budget_victims


def cands(*specs: tuple[str, int, float] | tuple[str, int, float, bool]) -> list[Candidate]:
    return [Candidate(*s) for s in specs]


def test_nothing_evicted_when_it_fits() -> None:
    pool = cands(("a", 10, 1.0), ("b", 10, 2.0))
    assert choose_victims(pool, used=20, incoming=80, budget=100) == []  # exactly full is within budget
    assert choose_victims([], used=0, incoming=0, budget=1) == []


def test_least_recently_used_first_and_only_as_many_as_needed() -> None:
    pool = cands(("new", 30, 9.0), ("old", 10, 1.0), ("mid", 20, 5.0))
    assert choose_victims(pool, used=60, incoming=45, budget=100) == ["old"]  # 105 -> 95
    assert choose_victims(pool, used=60, incoming=55, budget=100) == ["old", "mid"]  # 115 -> 85
    assert choose_victims(pool, used=60, incoming=100, budget=100) == ["old", "mid", "new"]


def test_in_use_artifacts_are_never_chosen() -> None:
    pool = cands(("old", 50, 1.0, True), ("mid", 20, 5.0), ("new", 30, 9.0))
    assert choose_victims(pool, used=100, incoming=20, budget=100) == ["mid"]
    assert choose_victims(pool, used=100, incoming=40, budget=100) == ["mid", "new"]


def test_none_when_no_eviction_can_make_room() -> None:
    pool = cands(("old", 50, 1.0, True), ("new", 30, 9.0))
    assert choose_victims(pool, used=80, incoming=71, budget=100) is None  # only 30 evictable
    assert choose_victims([], used=0, incoming=101, budget=100) is None


def test_reserved_bytes_of_fills_in_progress_count() -> None:
    # `used` includes a fill in flight (not a candidate): it cannot be evicted, only waited for
    pool = cands(("a", 40, 1.0))
    assert choose_victims(pool, used=40 + 50, incoming=20, budget=100) == ["a"]
    assert choose_victims(pool, used=40 + 70, incoming=40, budget=100) is None


def test_ties_are_broken_by_key_so_runs_agree() -> None:
    pool = cands(("b", 10, 1.0), ("a", 10, 1.0), ("c", 10, 1.0))
    assert [c.key for c in lru_order(pool)] == ["a", "b", "c"]
    assert choose_victims(reversed(pool), used=30, incoming=10, budget=30) == ["a"]


def test_over_budget_at_start_evicts_lru_until_under_or_all_free() -> None:
    pool = cands(("a", 40, 1.0), ("b", 40, 2.0), ("c", 40, 3.0, True))
    assert over_budget_victims(pool, used=120, budget=90) == ["a"]
    assert over_budget_victims(pool, used=120, budget=50) == ["a", "b"]
    assert over_budget_victims(pool, used=120, budget=10) == ["a", "b"]  # c is in use: best effort
    assert over_budget_victims(iter(pool), used=120, budget=200) == []


def test_random_caches_keep_the_invariants() -> None:
    rng = random.Random(14)
    for _ in range(2000):
        pool = [Candidate(f"k{i}", rng.randint(1, 50), float(rng.randint(0, 20)), rng.random() < 0.2)
                for i in range(rng.randint(0, 8))]
        used = sum(c.size for c in pool) + rng.randint(0, 30)
        budget, incoming = rng.randint(1, 300), rng.randint(0, 100)
        victims = choose_victims(pool, used=used, incoming=incoming, budget=budget)
        free = lru_order(pool)
        if victims is None:  # even all free ones are not enough
            assert used - sum(c.size for c in free) + incoming > budget
            continue
        by_key = {c.key: c for c in pool}
        assert victims == [c.key for c in free[: len(victims)]]  # a prefix of the LRU order
        assert not any(by_key[k].in_use for k in victims)
        freed = sum(by_key[k].size for k in victims)
        assert used - freed + incoming <= budget
        if victims:  # minimal: one fewer would not have fit
            assert used - (freed - by_key[victims[-1]].size) + incoming > budget
