"""Tracing: one SERVER span per RPC covering whole streams, with its status code."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from meshdemo.v1 import user_pb2
from tests.interceptors import servicer as cmd
from tests.interceptors.calls import KINDS, SERVER_STREAM, UNARY, call, full_name
from tests.interceptors.conftest import Harness, admin_md

STATUS_ATTR = "rpc.grpc.status_code"


@pytest.mark.parametrize("kind", KINDS)
async def test_one_server_span_per_call(harness: Harness, kind: str) -> None:
    assert (await call(harness.stub, kind, metadata=admin_md(), items=3)).code == grpc.StatusCode.OK
    [span] = await harness.wait_spans(1)
    assert span.name == full_name(kind)
    assert span.kind == SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes[STATUS_ATTR] == grpc.StatusCode.OK.value[0]
    assert span.status.status_code == StatusCode.UNSET
    # The handler ran inside the span, for every streamed item too.
    assert set(harness.servicer.seen.trace_ids) == {span.context.trace_id}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("command", "code", "span_status"),
    [
        # Server spans are ERROR only for server faults (OTel semantic conventions).
        (cmd.INVALID, grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET),
        (cmd.BOOM, grpc.StatusCode.INTERNAL, StatusCode.ERROR),
        (cmd.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED, StatusCode.ERROR),
        (cmd.ABORT, grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),
        (cmd.MISSING, grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),
    ],
)
async def test_error_code_is_on_the_span(
    harness: Harness, kind: str, command: str, code: grpc.StatusCode, span_status: StatusCode
) -> None:
    assert (await call(harness.stub, kind, command, metadata=admin_md())).code == code
    [span] = await harness.wait_spans(1)
    assert span.attributes is not None
    assert span.attributes[STATUS_ATTR] == code.value[0]
    assert span.status.status_code == span_status


async def test_span_covers_the_whole_stream(harness: Harness) -> None:
    # Two items, then a sleep cut by the deadline: the span ends after it.
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await call(harness.stub, SERVER_STREAM, cmd.SLEEP, metadata=admin_md(), deadline=0.4)
    assert outcome.responses == 2
    [span] = await harness.wait_spans(1)
    assert span.start_time is not None
    assert span.end_time is not None
    assert (span.end_time - span.start_time) / 1e9 >= 0.35
    assert loop.time() - started >= 0.35
    assert span.attributes is not None
    assert span.attributes[STATUS_ATTR] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_cancelled_call_span_says_cancelled(harness: Harness) -> None:
    pending = harness.stub.GetUser(user_pb2.GetUserRequest(id=cmd.SLEEP), metadata=admin_md())
    await asyncio.wait_for(harness.servicer.seen.started.wait(), 5)
    pending.cancel()
    [span] = await harness.wait_spans(1)
    assert span.attributes is not None
    assert span.attributes[STATUS_ATTR] == grpc.StatusCode.CANCELLED.value[0]


async def test_health_checks_are_not_traced(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    await call(harness.stub, UNARY, metadata=admin_md())
    [span] = await harness.wait_spans(1)
    assert span.name == full_name(UNARY)


async def test_span_continues_the_callers_trace(harness: Harness) -> None:
    client_tracer = TracerProvider().get_tracer("test-client")
    with client_tracer.start_as_current_span("client call") as parent:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    metadata = admin_md() + tuple(carrier.items())
    await call(harness.stub, UNARY, metadata=metadata)
    [span] = await harness.wait_spans(1)
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert trace.get_current_span() is trace.INVALID_SPAN
