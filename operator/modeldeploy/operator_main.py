"""Start the operator: settings, logging, metrics, the reconciler, then kopf's event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import handlers, logging_setup, telemetry
from .config import Settings
from .kube.client import Kube, load_api_client
from .reconciler import Reconciler

log = logging.getLogger(__name__)


def _configure_kopf(settings: Settings) -> None:
    @kopf.on.startup()
    def configure(settings_: kopf.OperatorSettings, **_: Any) -> None:  # type: ignore[misc]
        settings_.posting.enabled = False  # our own Events carry the decisions; kopf's would be noise
        settings_.watching.server_timeout = 300
        settings_.watching.client_timeout = 330
        settings_.execution.max_workers = 8
        settings_.batching.worker_limit = 64
        # Nothing is stored on the objects: no change-detecting handlers exist, and these
        # storages are only read if one is ever added.
        settings_.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
        settings_.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="modeldeploy.io", key="last-handled-configuration")


def run_operator(settings: Settings) -> int:
    logging_setup.configure(settings.log_format, settings.log_level)
    kube = Kube(load_api_client(), on_write=lambda verb: telemetry.API_WRITES.labels(verb=verb).inc())
    reconciler = Reconciler(kube, settings)
    handlers.RECONCILER = reconciler
    handlers.register_timer(settings.resync_seconds)
    _configure_kopf(settings)
    telemetry.serve(settings.metrics_port)
    log.info("modeldeploy starting: %s", "cluster-wide" if settings.cluster_wide else
             f"namespaces {','.join(settings.namespaces)}")
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=settings.cluster_wide,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.metrics_port + 1}/healthz",
    ))
    return 0

