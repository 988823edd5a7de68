"""The chain as a whole: its order, its shape, and the shared wrapper."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.auth import TokenVerifier
from service.interceptors import (
    AuthInterceptor,
    ErrorMappingInterceptor,
    LoggingInterceptor,
    MethodInfo,
    MetricsInterceptor,
    build_server_interceptors,
)
from service.metrics import ServerMetrics
from tests.interceptors.calls import KINDS, METHOD_OF, SERVICE, UNARY, call
from tests.interceptors.conftest import SECRET, Harness, admin_md, harness_for, reader_md
from tests.interceptors.servicer import TestServicer


def test_order_outermost_first() -> None:
    chain = build_server_interceptors(
        verifier=TokenVerifier(SECRET), metrics=ServerMetrics(), tracer_provider=None
    )
    assert [type(interceptor).__name__ for interceptor in chain] == [
        "TracingInterceptor",
        "ErrorMappingInterceptor",
        "LoggingInterceptor",
        "MetricsInterceptor",
        "AuthInterceptor",
    ]
    assert all(isinstance(interceptor, grpc.aio.ServerInterceptor) for interceptor in chain)


def test_optional_layers_are_left_out() -> None:
    chain = build_server_interceptors(verifier=None, metrics=None, tracer_provider=None)
    assert [type(interceptor) for interceptor in chain][1:] == [
        ErrorMappingInterceptor,
        LoggingInterceptor,
    ]
    only_auth = build_server_interceptors(
        verifier=TokenVerifier(SECRET), metrics=None, tracer_provider=None
    )
    assert type(only_auth[-1]) is AuthInterceptor
    assert not any(isinstance(interceptor, MetricsInterceptor) for interceptor in only_auth)


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_call_is_traced_logged_and_counted(harness: Harness, kind: str) -> None:
    outcome = await call(harness.stub, kind, refused=True)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED
    [line] = await harness.wait_access(1)
    assert line["code"] == "UNAUTHENTICATED"
    labels = {"grpc_service": SERVICE, "grpc_method": METHOD_OF[kind], "grpc_type": kind}
    assert harness.sample("grpc_server_started_total", **labels) == 1
    assert harness.sample("grpc_server_handled_total", grpc_code="UNAUTHENTICATED", **labels) == 1
    [span] = await harness.wait_spans(1)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert line["trace_id"] == format(span.context.trace_id, "032x")


async def test_permission_denied_is_logged_with_the_caller(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await harness.stub.CreateUser(user_pb2.CreateUserRequest(name="x"), metadata=reader_md())
    [line] = await harness.wait_access(1)
    # Refused after verification: the log says who was refused.
    assert line["code"] == "PERMISSION_DENIED"
    assert line["sub"] == "bob"


class _CountingInterceptor(grpc.aio.ServerInterceptor):
    """Outermost probe: how often the layer below is asked for a handler."""

    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls += 1
        return await continuation(details)


class _CountingLookups(LoggingInterceptor):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.wrapped: list[str] = []

    def hook_for(self, method: MethodInfo) -> Any:
        self.wrapped.append(method.full_name)
        return super().hook_for(method)


async def test_wrapped_handlers_are_cached_per_method(exporter: Any, log_capture: Any) -> None:
    probe = _CountingInterceptor()
    logging_layer = _CountingLookups(log_capture[0])
    chain = [probe, ErrorMappingInterceptor(log_capture[0]), logging_layer]
    async with harness_for(
        chain, servicer=TestServicer(), exporter=exporter, metrics=ServerMetrics(), log=log_capture
    ) as running:
        for _ in range(5):
            await call(running.stub, UNARY)
        await call(running.stub, "server_stream")
    assert probe.calls == 6
    assert logging_layer.wrapped == [
        f"/{SERVICE}/{METHOD_OF[UNARY]}",
        f"/{SERVICE}/{METHOD_OF['server_stream']}",
    ]
    assert len(running.logs.access()) == 6


async def test_unknown_methods_stay_unimplemented(harness: Harness) -> None:
    missing = harness.channel.unary_unary(
        "/meshdemo.v1.UserService/Nope", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await missing(b"", metadata=admin_md(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


class _WriterServicer(TestServicer):
    """A stream handler written against context.write (ours never are)."""

    async def ListUsers(self, request: Any, context: Any) -> None:  # type: ignore[override]
        for n in range(request.page_size):
            await context.write(user_pb2.ListUsersResponse(next_page_token=str(n)))


async def test_context_write_handlers_still_work(
    exporter: Any, tracer_provider: Any, log_capture: Any
) -> None:
    metrics = ServerMetrics()
    chain = build_server_interceptors(
        verifier=None, metrics=metrics, tracer_provider=tracer_provider, logger=log_capture[0]
    )
    async with harness_for(
        chain, servicer=_WriterServicer(), exporter=exporter, metrics=metrics, log=log_capture
    ) as running:
        replies = [
            reply.next_page_token
            async for reply in running.stub.ListUsers(
                user_pb2.ListUsersRequest(page_size=3), timeout=5
            )
        ]
        [line] = await running.wait_access(1)
    assert replies == ["0", "1", "2"]
    # Written around the wrapper, so they are not counted as responses.
    assert (line["code"], line["responses"]) == ("OK", 0)


class _UnimplementedServicer(user_pb2_grpc.UserServiceServicer):
    """The generated base: plain functions that raise NotImplementedError."""


async def test_generated_defaults_are_unimplemented(
    exporter: Any, tracer_provider: Any, log_capture: Any
) -> None:
    chain = build_server_interceptors(
        verifier=None, metrics=None, tracer_provider=tracer_provider, logger=log_capture[0]
    )
    async with harness_for(
        chain,
        servicer=_UnimplementedServicer(),  # type: ignore[abstract,arg-type]
        exporter=exporter,
        metrics=ServerMetrics(),
        log=log_capture,
    ) as running:
        for kind in KINDS:
            outcome = await call(running.stub, kind, refused=True)
            assert outcome.code == grpc.StatusCode.UNIMPLEMENTED


def test_method_info() -> None:
    handler = grpc.stream_stream_rpc_method_handler(lambda requests, context: requests)
    info = MethodInfo.of("/meshdemo.v1.UserService/Chat", handler)
    assert (info.service, info.name, info.grpc_type) == (
        "meshdemo.v1.UserService",
        "Chat",
        "bidi_stream",
    )
    assert info.request_streaming
    assert info.response_streaming
    odd = MethodInfo.of("nonsense", grpc.unary_unary_rpc_method_handler(lambda r, c: r))
    assert (odd.service, odd.name, odd.grpc_type) == ("unknown", "nonsense", "unary")
