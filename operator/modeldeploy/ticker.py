"""The fast tick (every `autoscale_seconds`, 2 s by default): the cached ModelDeployments, then
an autoscaling decision for each autoscaled one and a reconcile pass for each live canary.

Canaries need passes between events: an analysis is due every interval and a step ends after its
pause, while nothing in the cluster changes. The slower resync loop would add up to
`resync_seconds` to every canary decision; this tick keeps a bad canary's reaction in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .autoscaler import Autoscaler
from .config import Settings
from .rollout.canary import UNDER_WAY

log = logging.getLogger(__name__)


def canary_live(md: Mapping[str, Any]) -> bool:
    """Whether status.canary says a rollout is under way (paused ones wait for their annotation)."""
    phase = ((md.get("status") or {}).get("canary") or {}).get("phase")
    return phase in UNDER_WAY


def start(scaler: Autoscaler, models: Callable[[], list[dict[str, Any]]],
          enqueue: Callable[[str, str], None], is_leader: Callable[[], bool],
          settings: Settings) -> threading.Event:
    """Every tick: `models()` (the cache's ModelDeployments, no API read), a queued pass for each
    live canary, and the autoscaler's decisions; on the leader only."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.autoscale_seconds):
            if not is_leader():
                continue
            try:
                mds = models()
            except Exception as e:
                log.warning("tick: cannot read ModelDeployments: %s", e)
                continue
            for md in mds:
                if canary_live(md):
                    enqueue(md["metadata"]["namespace"], md["metadata"]["name"])
            try:
                scaler.tick(mds)
            except Exception as e:
                log.warning("autoscaler tick failed: %s", e)

    threading.Thread(target=loop, name="ticker", daemon=True).start()
    return stop
