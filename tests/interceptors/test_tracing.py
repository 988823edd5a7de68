"""Tracing: one SERVER span per RPC covering whole streams, with its status code."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracer, NoOpTracerProvider, SpanKind, StatusCode

from meshdemo.v1 import user_pb2
from service.interceptors import ErrorMappingInterceptor, tracing_interceptor
from service.interceptors._tracing import _peer_attributes
from service.metrics import ServerMetrics
from tests.interceptors import servicer as cmd
from tests.interceptors.calls import KINDS, SERVER_STREAM, UNARY, call, full_name
from tests.interceptors.conftest import Harness, admin_md, harness_for
from tests.interceptors.servicer import FloodServicer, TestServicer

STATUS_ATTR = "rpc.grpc.status_code"


@pytest.mark.parametrize("kind", KINDS)
async def test_one_server_span_per_call(harness: Harness, kind: str) -> None:
    assert (await call(harness.stub, kind, metadata=admin_md(), items=3)).code == grpc.StatusCode.OK
    [span] = await harness.wait_spans(1)
    # OTel RPC conventions: "$package.$service/$method", no leading slash.
    assert span.name == full_name(kind).removeprefix("/")
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
    assert span.name == full_name(UNARY).removeprefix("/")


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


async def test_span_attributes_follow_the_rpc_conventions(harness: Harness) -> None:
    await call(harness.stub, UNARY, metadata=admin_md())
    [span] = await harness.wait_spans(1)
    assert span.attributes is not None
    attributes = dict(span.attributes)
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "meshdemo.v1.UserService"
    assert attributes["rpc.method"] == "GetUser"
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert str(attributes["net.peer.port"]).isdigit()
    assert attributes["net.peer.name"] == "localhost"


async def test_server_fault_status_names_the_code(harness: Harness) -> None:
    await call(harness.stub, UNARY, cmd.BOOM, metadata=admin_md())
    [span] = await harness.wait_spans(1)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "INTERNAL"
    # The mapper answered with an abort: nothing worth an exception event.
    assert [event.name for event in span.events] == []


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (
            "ipv4:127.0.0.1:5000",
            {"net.peer.ip": "127.0.0.1", "net.peer.port": "5000", "net.peer.name": "localhost"},
        ),
        (
            "ipv6:%5B::1%5D:5001",
            {"net.peer.ip": "::1", "net.peer.port": "5001", "net.peer.name": "localhost"},
        ),
        ("ipv4:127.0.0.2:5002,127.0.0.3:9", {"net.peer.ip": "127.0.0.2", "net.peer.port": "5002"}),
        ("unix:/tmp/socket", {}),
        ("ipv4:no-port", {}),
        ("ipv4::5003", {}),
        ("ipv4:127.0.0.1:http", {}),
        ("", {}),
    ],
)
def test_peer_attributes(peer: str, expected: dict[str, str]) -> None:
    assert _peer_attributes(peer) == expected


class _BrokenTracer(NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer exploded")


class _BrokenProvider(NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return _BrokenTracer()


async def test_a_failing_tracer_never_breaks_the_call(
    exporter: Any, log_capture: Any, caplog: pytest.LogCaptureFixture
) -> None:
    chain = [tracing_interceptor(_BrokenProvider()), ErrorMappingInterceptor(log_capture[0])]
    async with harness_for(
        chain, servicer=TestServicer(), exporter=exporter, metrics=ServerMetrics(), log=log_capture
    ) as running:
        with caplog.at_level(logging.ERROR, logger="meshdemo.interceptors"):
            for kind in KINDS:
                assert (await call(running.stub, kind)).code == grpc.StatusCode.OK
    assert [r.getMessage() for r in caplog.records] == ["cannot start a server span"] * len(KINDS)


async def test_an_unmapped_exception_is_recorded(
    exporter: Any, tracer_provider: TracerProvider, log_capture: Any
) -> None:
    # Tracing alone (no error mapper inside it) sees the handler's own error.
    async with harness_for(
        [tracing_interceptor(tracer_provider)],
        servicer=TestServicer(),
        exporter=exporter,
        metrics=ServerMetrics(),
        log=log_capture,
    ) as running:
        await call(running.stub, UNARY, cmd.BOOM)
        [span] = await running.wait_spans(1)
    assert [event.name for event in span.events] == ["exception"]
    assert span.status.status_code == StatusCode.ERROR


class TestAbandonedStream:
    """A stream closed after grpc let go of it still ends its span, quietly."""

    @pytest.fixture
    def servicer(self) -> TestServicer:
        return FloodServicer()

    async def test_span_ends_cancelled_without_a_detach_error(
        self, harness: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR):
            stream = harness.stub.ListUsers(
                user_pb2.ListUsersRequest(page_size=5000), metadata=admin_md()
            )
            await stream.read()
            stream.cancel()
            [span] = await harness.wait_spans(1)
        assert span.attributes is not None
        assert span.attributes[STATUS_ATTR] == grpc.StatusCode.CANCELLED.value[0]
        assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []
