"""Chaos: a fixed delay before every UserService call, to show a slow replica.

Off unless ``MESH_FAULT_DELAY`` is set. Innermost, so the delay counts in the
latency that tracing, logging and metrics report, as a slow store would. Only
``meshdemo.v1.UserService`` methods are slowed: health and reflection answer
at full speed, as they do on a replica whose store is slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from meshdemo.contract import SERVICE_NAME

__all__ = ["FaultDelayInterceptor"]

_SERVICE_PREFIX = f"/{SERVICE_NAME}/"


def _delayed(
    handler: grpc.RpcMethodHandler[Any, Any], delay: float
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.response_streaming:
        inner_stream: Any = (
            handler.stream_stream if handler.request_streaming else handler.unary_stream
        )

        assert inner_stream is not None

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await asyncio.sleep(delay)
            async for response in inner_stream(request, context):
                yield response

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    inner = handler.stream_unary if handler.request_streaming else handler.unary_unary
    assert inner is not None

    async def unary(request: Any, context: Any) -> Any:
        await asyncio.sleep(delay)
        return await inner(request, context)

    factory = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class FaultDelayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Delays every UserService call by ``delay`` seconds (handlers cached per method)."""

    def __init__(self, delay: float) -> None:
        if delay <= 0:
            raise ValueError("delay must be positive")
        self._delay = delay
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        self._handlers[method] = _delayed(handler, self._delay)
        return self._handlers[method]
