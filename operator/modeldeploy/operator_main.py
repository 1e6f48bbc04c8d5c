"""Start the operator: settings, logging, metrics, the reconciler, then kopf's event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import handlers, logging_setup, resync, telemetry, ticker
from .config import Settings
from .kube.client import Kube, load_api_client
from .reconciler import Reconciler

log = logging.getLogger(__name__)


def _configure_kopf() -> None:
    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events carry the decisions; kopf's would be noise
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.execution.max_workers = 8
        settings.batching.worker_limit = 64


def run_operator(settings: Settings) -> int:
    logging_setup.configure(settings.log_format, settings.log_level)
    kube = Kube(load_api_client(), on_write=lambda verb: telemetry.API_WRITES.labels(verb=verb).inc())
    reconciler = Reconciler(kube, settings)
    handlers.RECONCILER = reconciler
    _configure_kopf()
    telemetry.serve(settings.metrics_port)
    resync.start(kube, reconciler, settings)
    ticker.start(kube, reconciler, settings)
    log.info("modeldeploy starting: %s", "cluster-wide" if settings.cluster_wide else
             f"namespaces {','.join(settings.namespaces)}")
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.metrics_port + 1}/healthz",
    ))
    return 0

