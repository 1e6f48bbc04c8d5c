"""The activator's gRPC side: every KServe v2 method held and forwarded as raw bytes (grpc.aio).

A generic handler takes every method without knowing its types (no deserialization: the request
bytes go to the pod as they came, the response bytes back). Unary methods are held on the model
named in the message; ModelStreamInfer (bidirectional) is held on its first message.

Over the cap: RESOURCE_EXHAUSTED; timed out, unknown model or stopping: UNAVAILABLE; both with a
`retry-after` trailing metadata entry (seconds) as the HTTP side's Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
from grpc import aio

from .hold import Gates, OverCap, Refused
from .routes import TARGET_METADATA, Route, RouteTable, resolve_grpc

log: Final = logging.getLogger("modeldeploy.activator")
STREAM_METHOD: Final = "/inference.GRPCInferenceService/ModelStreamInfer"
SERVICE_PREFIX: Final = "/inference.GRPCInferenceService/"
MAX_MESSAGE_BYTES: Final = 2**31 - 1
MAX_CHANNELS: Final = 256
# Metadata gRPC manages itself, never passed on.
RESERVED: Final = frozenset({"content-type", "te", "grpc-timeout", "user-agent", "grpc-accept-encoding",
                             "grpc-encoding", "grpc-message-type", TARGET_METADATA})


def _metadata(context: aio.ServicerContext) -> tuple[dict[str, str], list[tuple[str, Any]]]:
    md = list(context.invocation_metadata() or ())
    lookup = {k: v for k, v in md if isinstance(v, str)}
    return lookup, [(k, v) for k, v in md if k not in RESERVED and not k.startswith(":")]


def _code(e: Refused) -> grpc.StatusCode:
    return grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(e, OverCap) else grpc.StatusCode.UNAVAILABLE


class GrpcProxy:
    """Resolve, hold, forward."""

    def __init__(self, table: Callable[[], RouteTable], gates: Gates, forward_timeout_s: float) -> None:
        self._table = table
        self.gates = gates
        self.forward_timeout_s = forward_timeout_s
        self._channels: dict[str, aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def channel(self, target: str) -> aio.Channel:
        """One channel per backend; pods' addresses come and go, so only the newest 256 are kept."""
        ch = self._channels.get(target)
        if ch is None:
            while len(self._channels) >= MAX_CHANNELS:
                old = self._channels.pop(next(iter(self._channels)))
                task = asyncio.get_running_loop().create_task(old.close(grace=30))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            ch = self._channels[target] = aio.insecure_channel(target, options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    def handler(self) -> grpc.GenericRpcHandler:
        proxy = self

        class _Generic(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                method = details.method
                if not method.startswith(SERVICE_PREFIX):
                    return None  # UNIMPLEMENTED: this is not a KServe v2 call
                if method == STREAM_METHOD:
                    return grpc.stream_stream_rpc_method_handler(proxy._stream)

                async def unary(request: bytes, context: aio.ServicerContext) -> bytes:
                    return await proxy._unary(method, request, context)

                return grpc.unary_unary_rpc_method_handler(unary)

        return _Generic()

    async def _abort(self, context: aio.ServicerContext, e: Refused) -> None:
        await context.abort(_code(e), str(e), trailing_metadata=(("retry-after", str(e.retry_after_s)),))

    def _route(self, lookup: dict[str, str], message: bytes | None) -> Route:
        self.gates.check_draining()
        found = resolve_grpc(self._table(), lookup, message)
        if found.route is None:
            raise self.gates.unknown(found.problem)
        r = found.route
        self.gates.metrics.received.labels(namespace=r.namespace, name=r.name).inc()
        return r

    def _deadline(self, arrived: float, context: aio.ServicerContext) -> float:
        deadline = arrived + self.gates.settings.timeout_s
        remaining = context.time_remaining()
        if remaining is not None:  # never hold past the client's own deadline
            deadline = min(deadline, time.monotonic() + remaining)
        return deadline

    async def _unary(self, method: str, request: bytes, context: aio.ServicerContext) -> bytes:
        arrived = time.monotonic()
        lookup, forward_md = _metadata(context)
        try:
            route = self._route(lookup, request)
            deadline = self._deadline(arrived, context)
            while True:
                gate = self.gates.gate(route)
                await gate.wait(deadline)
                target = gate.target
                call = self.channel(target.grpc).unary_unary(method)
                timeout, remaining = self.forward_timeout_s, context.time_remaining()
                if remaining is not None:
                    timeout = max(0.001, min(timeout, remaining))
                try:
                    response = await call(request, metadata=forward_md, timeout=timeout)
                except aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                        log.info("%s: %s unavailable: holding", route.key, target.grpc)
                        gate.close()
                        continue
                    self.gates.metrics.forwarded.labels(namespace=route.namespace, name=route.name).inc()
                    await context.abort(e.code(), e.details() or "", trailing_metadata=e.trailing_metadata() or ())
                    raise  # abort raises; for the type checker
                self.gates.metrics.forwarded.labels(namespace=route.namespace, name=route.name).inc()
                return response
        except Refused as e:
            await self._abort(context, e)
            raise

    async def _stream(self, requests: AsyncIterator[bytes], context: aio.ServicerContext) -> AsyncIterator[bytes]:
        arrived = time.monotonic()
        lookup, forward_md = _metadata(context)
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        try:
            route = self._route(lookup, first)
            gate = self.gates.gate(route)
            await gate.wait(self._deadline(arrived, context))
        except Refused as e:
            await self._abort(context, e)
            return
        call = self.channel(gate.target.grpc).stream_stream(STREAM_METHOD)(metadata=forward_md)

        async def pump() -> None:
            await call.write(first)
            async for message in requests:
                await call.write(message)
            await call.done_writing()

        writer = asyncio.get_running_loop().create_task(pump())
        try:
            async for response in call:
                yield response
            self.gates.metrics.forwarded.labels(namespace=route.namespace, name=route.name).inc()
        finally:
            writer.cancel()


def server_options(max_connection_age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """gRPC channels are long-lived HTTP/2 connections, and kube-proxy picks a backend per connection:
    a client would stay on the activator after the model's Service went back to its pods. So every
    connection is told to go away (GOAWAY) after `max_connection_age_s`; calls in flight may finish
    within `grace_s` (held ones included), and the client's channel reconnects by itself, through
    the Service, to the pods."""
    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(grace_s * 1000))]


async def start_server(proxy: GrpcProxy, address: str, port: int, max_connection_age_s: float = 10.0,
                       grace_s: float = 600.0) -> tuple[aio.Server, int]:
    server = aio.server(options=server_options(max_connection_age_s, grace_s))
    server.add_generic_rpc_handlers((proxy.handler(),))
    bound = server.add_insecure_port(f"{'[' + address + ']' if ':' in address else address}:{port}")
    await server.start()
    return server, bound
