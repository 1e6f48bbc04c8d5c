"""The activator's HTTP side (aiohttp): KServe v2 over HTTP/1.1 held and forwarded, and the admin port.

Requests are forwarded as they came (method, path, query, headers but the hop-by-hop ones, body
bytes; responses likewise, never decompressed or re-encoded), so Triton's binary tensor extension
(`Inference-Header-Content-Length`) passes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .hold import Gates, Refused
from .routes import Route, RouteTable, resolve_http

log: Final = logging.getLogger("modeldeploy.activator")
HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                               "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})


def forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers to pass on (repeated ones kept): all but hop-by-hop ones and those Connection names."""
    items = list(headers.items())  # a multidict's items() lists every repeated header
    named = {t.strip().lower() for k, v in items if k.lower() == "connection" for t in v.split(",")}
    return CIMultiDict((k, v) for k, v in items if k.lower() not in HOP_BY_HOP and k.lower() not in named)


def refusal(e: Refused) -> web.Response:
    return web.Response(status=e.status, text=f"{e}\n", headers={"Retry-After": str(e.retry_after_s)})


class HttpProxy:
    """Resolve, hold, forward."""

    def __init__(self, table: Callable[[], RouteTable], gates: Gates, max_body_bytes: int,
                 forward_timeout_s: float, max_held_bytes: int = 2**30) -> None:
        self._table = table
        self.gates = gates
        self.max_body_bytes = max_body_bytes
        self.max_held_bytes = max_held_bytes  # request bodies in memory at once, all models
        self.held_bytes = 0
        self.forward_timeout_s = forward_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def probe(self, route: Route) -> bool:
        """True when the model's pods answer ready (the gates' probe; HTTP for both protocols)."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.gates.settings.probe_timeout_s)
        try:
            async with self._session.get(f"http://{route.http}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        # No per-host limit: held requests are released together, and Triton batches them.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=10, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))

    async def _stop(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every answer closes its connection: kube-proxy chooses a backend per connection, so a
        keep-alive client would otherwise stay on the activator after the model's Service went back
        to its pods. The next request's new connection reaches the pods directly."""
        resp = await self._handle(request)
        resp.force_close()
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        route: Route | None = None
        try:
            self.gates.check_draining()
            found = resolve_http(self._table(), request.host, request.path)
            if found.route is None:
                raise self.gates.unknown(found.problem)
            route = found.route
            self.gates.metrics.received.labels(namespace=route.namespace, name=route.name).inc()
            size = request.content_length or 0
            if self.held_bytes + size > self.max_held_bytes:
                raise self.gates.over_budget(route, self.max_held_bytes)
            body = await request.read()
            if self.held_bytes + len(body) > self.max_held_bytes:  # a chunked body, known only now
                raise self.gates.over_budget(route, self.max_held_bytes)
            self.held_bytes += len(body)
            try:
                return await self._hold_and_forward(request, route, body, arrived + self.gates.settings.timeout_s)
            finally:
                self.held_bytes -= len(body)
        except Refused as e:
            return refusal(e)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("%s %s: forward failed: %s", request.method, request.path, e.__class__.__name__)
            if route is not None:
                self.gates.metrics.backend_errors.labels(namespace=route.namespace, name=route.name).inc()
            return web.Response(status=502, text=f"the model's pod did not answer: {e.__class__.__name__}\n")

    async def _hold_and_forward(self, request: web.Request, route: Route, body: bytes,
                                deadline: float) -> web.StreamResponse:
        while True:
            gate = self.gates.gate(route)
            await gate.wait(deadline)
            target = gate.target
            try:
                return await self._forward(request, target, body)
            except aiohttp.ClientConnectorError as e:  # nothing was sent: hold it again
                log.info("%s: cannot connect to %s (%s): holding", route.key, target.http, e.__class__.__name__)
                gate.close()
                if time.monotonic() >= deadline:
                    raise self.gates.timed_out(route) from None

    async def _forward(self, request: web.Request, route: Route, body: bytes) -> web.StreamResponse:
        assert self._session is not None
        headers = forward_headers(request.headers)
        peer = request.remote or ""
        headers.add("X-Forwarded-For", peer)
        url = f"http://{route.http}{request.rel_url}"
        timeout = aiohttp.ClientTimeout(total=self.forward_timeout_s)
        async with self._session.request(request.method, url, headers=headers, data=body or None,
                                         timeout=timeout, allow_redirects=False) as r:
            payload = await r.read()
            resp = web.Response(status=r.status, body=payload, headers=forward_headers(r.headers))
        self.gates.metrics.forwarded.labels(namespace=route.namespace, name=route.name).inc()
        return resp


class AdminApp:
    """/healthz (live), /readyz (routes loaded and not draining), /metrics."""

    def __init__(self, gates: Gates, routes_loaded: Callable[[], bool]) -> None:
        self.gates = gates
        self._loaded = routes_loaded
        self.not_ready = False  # set on SIGTERM, before new requests are refused

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.gates.draining or self.not_ready:
            return web.Response(status=503, text="stopping\n")
        if not self._loaded():
            return web.Response(status=503, text="routes not loaded yet\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.gates.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
