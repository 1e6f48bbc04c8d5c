"""The drift-healing tick: every few seconds, one LIST of ModelDeployments and a pass for each.

Why not `kopf.timer`: kopf adds a finalizer to every object that has a timer or daemon, which
would block deletion while the operator is down and write to the user's object. One LIST per
interval also costs far less than one timer per object at a thousand ModelDeployments.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from . import constants
from .config import Settings
from .kube.client import Kube
from .reconciler import Reconciler

log = logging.getLogger(__name__)


def _targets(kube: Kube, settings: Settings) -> list[tuple[str, str]]:
    namespaces: list[str | None] = list(settings.namespaces) or [None]
    found = []
    for ns in namespaces:
        for md in kube.list(constants.KIND, ns):
            found.append((md["metadata"]["namespace"], md["metadata"]["name"]))
    return found


def _one(reconciler: Reconciler, namespace: str, name: str) -> None:
    try:
        reconciler.request(namespace, name)
    except Exception as e:  # the next tick or event retries; one object never stops the loop
        log.warning("resync of %s/%s failed: %s", namespace, name, e)


def run_forever(kube: Kube, reconciler: Reconciler, settings: Settings, stop: threading.Event) -> None:
    """Reconcile every ModelDeployment each `settings.resync_seconds`, until `stop` is set."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="resync") as pool:
        while not stop.wait(settings.resync_seconds):
            try:
                targets = _targets(kube, settings)
            except Exception as e:
                log.warning("resync: cannot list ModelDeployments: %s", e)
                continue
            list(pool.map(lambda t: _one(reconciler, *t), targets))


def start(kube: Kube, reconciler: Reconciler, settings: Settings) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(kube, reconciler, settings, stop), name="resync",
                     daemon=True).start()
    return stop
