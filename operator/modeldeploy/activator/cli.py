"""Entry point: `python -m modeldeploy.activator`: load routes, serve HTTP, gRPC and admin until SIGTERM.

Exit codes: 0 after SIGTERM/SIGINT, 2 invalid settings, 1 a port could not be bound.
On SIGTERM the replica turns not-ready (its endpoints go), answers new requests 503 with
Retry-After 1 (a client retrying reaches the other replica), and waits up to the drain time for
the requests it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Final

from aiohttp import web

from .demand import Sink, ThrottledDemand
from .grpc_proxy import GrpcProxy, start_server
from .hold import Gates
from .http_proxy import AdminApp, HttpProxy
from .metrics import ActivatorMetrics
from .routes import Route, RouteTable
from .settings import ActivatorSettings, SettingsError, activator_settings
from .source import Routes, poll_file

PREFIX: Final = "activator"
log: Final = logging.getLogger("modeldeploy.activator")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {PREFIX} %(levelname)s %(message)s"))
    for name in ("modeldeploy.activator", "modeldeploy.kube"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _kube(settings: ActivatorSettings):  # -> modeldeploy.kube.client.Kube
    from ..kube.client import Kube, load_api_client

    return Kube(load_api_client(settings.kubeconfig or None, connections=4))


async def run(settings: ActivatorSettings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> int:
    """Serve until `stop` is set, then drain."""
    loop = asyncio.get_running_loop()
    metrics = ActivatorMetrics()
    kube = _kube(settings) if settings.demand_lease or settings.routes_configmap else None
    sink: Sink | None = None
    if settings.demand_lease and kube is not None:
        from ..kube.activator import DemandLease

        sink = DemandLease(kube, settings.namespace, settings.demand_lease,
                           settings.identity or socket.gethostname())
    demand = ThrottledDemand(sink, metrics, settings.demand_renew_s)
    gates: Gates | None = None

    def routes_changed(table: RouteTable) -> None:
        def apply() -> None:
            metrics.routes.set(len(table.routes))  # the operator's list (not the ones leaving)
            if gates is not None:
                gates.refresh(table.by_key)
                gates.prune(set(routes.table().by_key))

        loop.call_soon_threadsafe(apply)

    routes = Routes(routes_changed)

    async def probe(route: Route) -> bool:
        return await http.probe(route)

    gates = Gates(settings.hold, metrics, probe, demand)
    http = HttpProxy(routes.table, gates, settings.max_body_bytes, settings.forward_timeout_s,
                     settings.max_held_bytes)
    grpc_proxy = GrpcProxy(routes.table, gates, settings.forward_timeout_s)

    stop_threads = threading.Event()
    if settings.routes_configmap and kube is not None:
        from ..kube.activator import ROUTES_KEY, watch_config_map

        threading.Thread(target=watch_config_map, name="routes", daemon=True, args=(
            kube, settings.namespace, settings.routes_configmap,
            lambda obj: routes.from_config_map(obj, ROUTES_KEY), stop_threads)).start()
    elif settings.routes_file is not None:
        threading.Thread(target=poll_file, name="routes", daemon=True,
                         args=(routes, settings.routes_file, stop_threads)).start()

    http_runner = web.AppRunner(http.app(), access_log=None, handle_signals=False)
    admin = AdminApp(gates, lambda: routes.loaded)
    admin_runner = web.AppRunner(admin.app(), access_log=None)
    await http_runner.setup()
    await admin_runner.setup()
    http_site = web.TCPSite(http_runner, settings.address, settings.http_port, backlog=4096)
    admin_site = web.TCPSite(admin_runner, settings.address, settings.admin_port)
    await http_site.start()
    await admin_site.start()
    grpc_server, grpc_port = await start_server(
        grpc_proxy, settings.address, settings.grpc_port, settings.grpc_max_connection_age_s,
        grace_s=settings.hold.timeout_s + settings.forward_timeout_s)
    if grpc_port == 0:
        raise OSError(f"cannot listen for gRPC on {settings.address}:{settings.grpc_port}")
    log.info("listening: http %s:%d, grpc %d, admin %d; hold up to %d requests per model for %gs",
             settings.address, settings.http_port, grpc_port, settings.admin_port, settings.hold.max_held,
             settings.hold.timeout_s)
    if ready is not None:
        ready.set()
    await stop.wait()

    # Not ready first, still serving: the endpoints drop this replica within a few seconds, and
    # requests that arrive meanwhile are held as usual. Then new ones are refused with Retry-After
    # (a retry reaches the other replica) while held ones may still finish within the drain time.
    admin.not_ready = True
    deadline = loop.time() + settings.drain_s
    log.info("stopping: not ready; serving %gs more while endpoints update", settings.unready_s)
    await asyncio.sleep(min(settings.unready_s, settings.drain_s))
    gates.draining = True
    log.info("draining: %d held request(s) may finish within %.0fs", gates.waiting, deadline - loop.time())
    while gates.waiting and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if gates.waiting:
        log.info("drain time over: answering %d held request(s) 503 with Retry-After", gates.refuse_held())
        for _ in range(20):  # let the handlers write their answers
            if not gates.waiting:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    await grpc_server.stop(grace=max(0.0, min(5.0, deadline - loop.time())))
    await http_runner.cleanup()
    await admin_runner.cleanup()
    await grpc_proxy.close()
    await gates.aclose()
    await demand.aclose()
    stop_threads.set()
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        settings = activator_settings(list(argv) if argv is not None else sys.argv[1:], env)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except SettingsError as e:
        print(f"{PREFIX}: error: {e}", file=sys.stderr, flush=True)
        return 2
    setup_logging(settings.log_level)

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(settings, stop)

    try:
        return asyncio.run(serve())
    except OSError as e:
        print(f"{PREFIX}: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
