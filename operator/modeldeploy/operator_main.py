"""Start the operator: settings, logging, metrics, the cache, the election, then kopf's event loop.

Order matters: the cache is filled by one LIST per kind before any pass may use it, and kopf's
watches feed it from then on; the election starts last, and winning it queues a pass for every
cached model (a new leader picks up canaries and autoscaling from their status).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import constants, handlers, logging_setup, resync, telemetry, ticker
from .activation import ActivatorLink
from .autoscaler import Autoscaler
from .config import Settings
from .kube.cache import ACTIVATOR_KINDS, CACHED_KINDS, WatchCache
from .kube.client import Kube, load_api_client
from .leader import Elector
from .reconciler import Reconciler
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

PASS_WORKERS = 8


def _configure_kopf() -> None:
    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events carry the decisions; kopf's would be noise
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.execution.max_workers = 8
        # Our handlers only feed the cache and queue a pass, so a per-object worker has nothing to
        # wait for. kopf keeps each one `idle_timeout` (5 s by default) after its object's last
        # event and lets `worker_limit` of them run per watched kind; with 64 and 5 s a kind's events
        # were taken at ≈13 objects a second, and at 5000 models the cache ran minutes behind.
        settings.queueing.idle_timeout = 0.5
        settings.queueing.worker_limit = 512


def run_operator(settings: Settings) -> int:
    logging_setup.configure(settings.log_format, settings.log_level)
    kube = Kube(load_api_client(), on_write=lambda verb: telemetry.API_WRITES.labels(verb=verb).inc())
    cache = WatchCache(CACHED_KINDS + (ACTIVATOR_KINDS if settings.activator_enabled else ()))
    reconciler = Reconciler(kube, settings)
    reconciler.use_cache(cache)
    scaler = Autoscaler(kube, settings)
    scaler.reader, scaler.cache = reconciler.reader, cache

    def one_pass(namespace: str, name: str) -> None:
        telemetry.QUEUE_DEPTH.set(queue.depth())
        try:
            reconciler.request(namespace, name)
        finally:
            telemetry.QUEUE_DEPTH.set(queue.depth() - 1)  # this pass still counts until it returns

    queue = WorkQueue(one_pass, workers=PASS_WORKERS)
    reconciler.wake = queue.add  # a build's record wakes the models that waited for it

    def queue_everything() -> None:
        for md in resync.all_models(cache):
            queue.add_later(md["metadata"]["namespace"], md["metadata"]["name"])

    elector: Elector | None = None
    if settings.leader_namespace:
        elector = Elector(kube, settings, on_elected=queue_everything)
        reconciler.is_leader = elector.is_leader
    else:
        telemetry.IS_LEADER.set(1)
    is_leader = reconciler.is_leader

    link: ActivatorLink | None = None
    if settings.activator_enabled:
        def on_demand(namespace: str, name: str, at: float) -> None:
            """0 -> 1 at once: the autoscaler's status write, then a pass (not at the next tick)."""
            if not is_leader():
                return
            md = cache.get_or_none(constants.KIND, namespace, name)
            if md is None:
                return
            if not scaler.wake(md, at):  # refused on a version the cache had not caught up with?
                md = kube.get_or_none(constants.KIND, namespace, name)
                if md is None or not scaler.wake(md, at):
                    return
            queue.add(namespace, name)

        def on_activator_change() -> None:
            """The activator's Ready pods changed: every model that may be pointed at it gets a pass."""
            if not is_leader():
                return
            for md in resync.all_models(cache):
                if ((md.get("spec") or {}).get("autoscaling") or {}).get("minReplicas") == 0:
                    queue.add(md["metadata"]["namespace"], md["metadata"]["name"])

        link = ActivatorLink(kube, settings, on_demand, on_activator_change)
        reconciler.link = scaler.link = link

    resync.relist(kube, cache, settings)  # before kopf: passes then never see an empty cache
    handlers.CACHE, handlers.QUEUE = cache, queue
    if settings.artifacts_enabled:
        handlers.watch_jobs()
    if link is not None:
        handlers.watch_endpointslices()
        link.start()
    _configure_kopf()
    telemetry.serve(settings.metrics_port)
    resync.start(kube, cache, settings, queue.add_later, is_leader)  # sweeps wait behind events
    ticker.start(scaler, lambda: resync.all_models(cache), queue.add, is_leader, settings)
    if elector is not None:
        elector.start()
    log.info("modeldeploy starting: %s%s", "cluster-wide" if settings.cluster_wide else
             f"namespaces {','.join(settings.namespaces)}",
             f", leader election in {settings.leader_namespace} as {elector.me}" if elector else ", no election")
    try:
        asyncio.run(kopf.operator(
            standalone=True,
            clusterwide=settings.cluster_wide,
            namespaces=list(settings.namespaces),
            liveness_endpoint=f"http://0.0.0.0:{settings.metrics_port + 1}/healthz",
        ))
    finally:
        if elector is not None:
            elector.release()
        queue.stop()
    return 0
