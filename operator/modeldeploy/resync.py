"""Passes nothing in the cluster asks for: timed passes for unsettled models, and the safety relist.

Events drive everything else (handlers.py). What events cannot drive:
- time passing: a revision that must start within its startupTimeout, a Degraded model whose pod
  is stuck Pending, a status that is not yet what the spec asks. Every `resync_seconds`, models
  that are not settled get a pass; it reads only the cache, so it costs no API request.
- a missed event: every `relist_seconds` (10 min by default) every cached kind is LISTed again
  into the cache and every model gets a pass. That is the only periodic API read.

Why not `kopf.timer`: kopf adds a finalizer to every object that has a timer or daemon, which
would block deletion while the operator is down and write to the user's object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import constants, telemetry
from .config import Settings
from .kube import cache as kcache
from .kube.client import Kube

log = logging.getLogger(__name__)

# Failed waits for a new spec (an event), not a timer; ScaledToZero for demand (the activator's Lease).
SETTLED_PHASES = frozenset({"Ready", "Failed", "ScaledToZero"})


def settled(md: Mapping[str, Any]) -> bool:
    """Whether a model needs no pass until something changes: its status describes its current
    spec and it is Ready (or failed for a reason only a new spec can fix)."""
    meta, status = md.get("metadata") or {}, md.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False
    if (status.get("canary") or {}).get("phase") not in (None, "Promoted", "RolledBack"):
        return False
    return status.get("phase") in SETTLED_PHASES


def namespaces_of(settings: Settings) -> list[str | None]:
    return list(settings.namespaces) or [None]


def relist(kube: Kube, cache: kcache.WatchCache, settings: Settings) -> int:
    """Fill the cache from one LIST per kind and namespace; returns the objects listed."""
    began = time.monotonic()
    count = kcache.relist(cache, kube, namespaces_of(settings))
    telemetry.RELISTS.inc()
    for kind, n in cache.size().items():
        telemetry.CACHE_OBJECTS.labels(kind=kind).set(n)
    log.info("cache: listed %d objects in %.1fs", count, time.monotonic() - began)
    return count


def all_models(cache: kcache.WatchCache) -> list[dict[str, Any]]:
    return cache.list(constants.KIND, None)


def run_forever(kube: Kube, cache: kcache.WatchCache, settings: Settings, enqueue: Callable[[str, str], None],
                is_leader: Callable[[], bool], stop: threading.Event) -> None:
    last_relist = time.monotonic()
    while not stop.wait(settings.resync_seconds):
        if time.monotonic() - last_relist >= settings.relist_seconds:
            last_relist = time.monotonic()
            try:
                relist(kube, cache, settings)
            except Exception as e:
                log.warning("cache relist failed (the watches still feed it): %s", e)
                continue
            due = all_models(cache)
        else:
            due = [md for md in all_models(cache) if not settled(md)]
        if not is_leader():
            continue
        for md in due:
            enqueue(md["metadata"]["namespace"], md["metadata"]["name"])


def start(kube: Kube, cache: kcache.WatchCache, settings: Settings, enqueue: Callable[[str, str], None],
          is_leader: Callable[[], bool]) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(kube, cache, settings, enqueue, is_leader, stop), name="resync",
                     daemon=True).start()
    return stop
