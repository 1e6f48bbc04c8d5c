"""Which artifacts to evict: pure decisions, no disk and no clock, so they are tested exhaustively.

The cache holds whole artifacts (a Triton model directory is useless in part), so eviction picks
whole artifacts, least recently used first. An artifact in use (a response streaming from it, or a
fill writing it) is never chosen: taking the files from under a pod that is reading them would
turn a cache hit into a failed start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One cached artifact as eviction sees it."""

    key: str
    size: int  # bytes of its files
    last_used: float  # seconds since the epoch: when a pod last asked for it (or it was filled)
    in_use: bool = False  # being served or filled: never evicted


def lru_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The evictable candidates, least recently used first (the key breaks ties, so the order is
    the same on every run)."""
    return sorted((c for c in candidates if not c.in_use), key=lambda c: (c.last_used, c.key))


def choose_victims(candidates: Iterable[Candidate], *, used: int, incoming: int, budget: int) -> list[str] | None:
    """Keys to evict, least recently used first, so that `used` - evicted + `incoming` <= `budget`.

    `used` counts every byte the cache holds or has reserved (fills in progress); `incoming` is the
    size of the artifact about to be filled (0 to only bring the cache back under its budget).
    Empty when it already fits; None when even evicting every artifact not in use cannot make
    room (the caller then refuses the fill: the pod reads from the store instead).
    """
    need = used + incoming - budget
    if need <= 0:
        return []
    victims: list[str] = []
    freed = 0
    for c in lru_order(candidates):
        victims.append(c.key)
        freed += c.size
        if freed >= need:
            return victims
    return None


def over_budget_victims(candidates: Iterable[Candidate], *, used: int, budget: int) -> list[str]:
    """Keys to evict to get back under `budget` as far as artifacts not in use allow (at start,
    after the budget was lowered): least recently used first, possibly all of them."""
    pool = list(candidates)
    victims = choose_victims(pool, used=used, incoming=0, budget=budget)
    return [c.key for c in lru_order(pool)] if victims is None else victims
