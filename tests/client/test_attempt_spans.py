"""Attempt spans end with their code: failures are ERROR, cancelled attempts say CANCELLED.

Real replicas on loopback (service.testing), in-memory spans.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client import PoolConfig, UserClient
from client._interceptors import tracing_interceptors
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.testing import admin_token, serve
from tests.client.test_client import FirstNotExcluded, closed_port

CODE = "rpc.grpc.status_code"
ADMIN = (("authorization", f"Bearer {admin_token()}"),)


def attempts(exporter: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.name == f"/meshdemo.v1.UserService/{method}"
    ]


async def test_a_failed_attempt_is_error_with_its_code_and_the_winner_is_ok(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    dead = closed_port("127.0.0.2")
    async with (
        serve("127.0.0.3") as live,
        UserClient(
            f"static:///{dead},{live.address}",
            token=admin_token(),
            tracer_provider=provider,
            policy=FirstNotExcluded(),
            pool=PoolConfig(health_check=False),
        ) as client,
    ):
        with pytest.raises(Exception, match="NOT_FOUND"):
            await client.get_user("no-such-user")
    failed, answered = sorted(attempts(exporter, "GetUser"), key=lambda s: s.start_time or 0)
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})[CODE] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert (failed.status.description or "").startswith("UNAVAILABLE")
    # NOT_FOUND came from the replica: the attempt worked, the answer was no.
    assert (answered.attributes or {})[CODE] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_an_attempt_cancelled_mid_call_is_recorded_as_cancelled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with (
        serve("127.0.0.1", fault_delay=2.0) as slow,
        UserClient(f"static:///{slow.address}", token=admin_token(), tracer_provider=provider) as c,
    ):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.get_user("u-1"), 0.3)
    [attempt] = attempts(exporter, "GetUser")
    assert attempt.status.status_code is StatusCode.ERROR
    assert (attempt.attributes or {})[CODE] == grpc.StatusCode.CANCELLED.value[0]
    assert (attempt.attributes or {})["meshdemo.cancelled"] is True


async def test_stream_attempts_end_with_their_code(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with (
        serve("127.0.0.1") as server,
        grpc.aio.insecure_channel(
            server.address, interceptors=tracing_interceptors(provider)
        ) as channel,
    ):
        stub = user_pb2_grpc.UserServiceStub(channel)
        batch = [
            user_pb2.BatchCreateUsersRequest(
                user=user_pb2.CreateUserRequest(name="A", email="a@example.com", age=3)
            )
        ]
        await stub.BatchCreateUsers(iter(batch), metadata=ADMIN)
        listed = [u async for u in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=ADMIN)]
        bad = stub.ListUsers(user_pb2.ListUsersRequest(page_token="garbage"), metadata=ADMIN)
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in bad:
                pass
    assert len(listed) == 1
    [batch_span] = attempts(exporter, "BatchCreateUsers")
    assert (batch_span.attributes or {})[CODE] == 0
    assert batch_span.status.status_code is StatusCode.UNSET
    ok, failed = sorted(attempts(exporter, "ListUsers"), key=lambda s: s.start_time or 0)
    assert (ok.attributes or {})[CODE] == 0
    assert (failed.attributes or {})[CODE] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert failed.status.status_code is StatusCode.ERROR


async def test_health_checks_make_no_span_and_calls_carry_traceparent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with (
        serve("127.0.0.1", tracer_provider=provider) as server,
        grpc.aio.insecure_channel(
            server.address, interceptors=tracing_interceptors(provider)
        ) as channel,
    ):
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert exporter.get_finished_spans() == ()
        stub = user_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetUser(user_pb2.GetUserRequest(id="x"), metadata=ADMIN)
    [attempt] = attempts(exporter, "GetUser")
    assert attempt.parent is None  # No logical span here: the attempt is the root.
    assert (attempt.attributes or {})["rpc.method"] == "GetUser"
    assert (attempt.attributes or {})["rpc.service"] == "meshdemo.v1.UserService"
    [server_span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server_span.parent is not None and attempt.context is not None
    assert server_span.parent.span_id == attempt.context.span_id  # traceparent went on the wire
