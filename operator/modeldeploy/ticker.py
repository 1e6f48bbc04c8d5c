"""The fast tick (every `autoscale_seconds`, 2 s by default): one LIST of ModelDeployments, then
an autoscaling decision for each autoscaled one and a reconcile pass for each live canary.

Canaries need passes between events: an analysis is due every interval and a step ends after its
pause, while nothing in the cluster changes. The slower resync loop would add up to
`resync_seconds` to every canary decision; this tick keeps a bad canary's reaction in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import constants
from .autoscaler import Autoscaler
from .config import Settings
from .kube.client import Kube
from .reconciler import Reconciler
from .rollout.canary import LIVE, Phase

log = logging.getLogger(__name__)


def canary_live(md: Mapping[str, Any]) -> bool:
    """Whether status.canary says a rollout is under way (paused ones wait for their annotation)."""
    phase = ((md.get("status") or {}).get("canary") or {}).get("phase")
    return phase in LIVE or phase == Phase.PAUSED


def list_all(kube: Kube, settings: Settings) -> list[dict[str, Any]]:
    namespaces: list[str | None] = list(settings.namespaces) or [None]
    return [md for ns in namespaces for md in kube.list(constants.KIND, ns)]


def start(kube: Kube, reconciler: Reconciler, settings: Settings) -> threading.Event:
    scaler = Autoscaler(kube, settings)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="canary")

    def one(namespace: str, name: str) -> None:
        try:
            reconciler.request(namespace, name)
        except Exception as e:  # the next tick retries
            log.warning("canary pass for %s/%s failed: %s", namespace, name, e)

    def loop() -> None:
        while not stop.wait(settings.autoscale_seconds):
            try:
                mds = list_all(kube, settings)
            except Exception as e:
                log.warning("tick: cannot list ModelDeployments: %s", e)
                continue
            for md in mds:
                if canary_live(md):
                    pool.submit(one, md["metadata"]["namespace"], md["metadata"]["name"])
            try:
                scaler.tick(mds)
            except Exception as e:
                log.warning("autoscaler tick failed: %s", e)

    threading.Thread(target=loop, name="ticker", daemon=True).start()
    return stop
