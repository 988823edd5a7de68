"""Tracing: one span per logical call, one child span per attempt, W3C context on the wire."""

from __future__ import annotations

import socket

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from client import PoolConfig, UserClient
from client.testing import FakeReplica
from tests.client.test_client import FirstNotExcluded


def closed_port(host: str) -> str:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"


def by_name(spans: tuple[ReadableSpan, ...], suffix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.endswith(suffix)]


async def test_attempt_spans_are_children_of_the_logical_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    servicer = FakeReplica("127.0.0.3", name="traced")
    dead = closed_port("127.0.0.2")
    async with (
        servicer,
        UserClient(
            f"static:///{dead},{servicer.address}",
            tracer_provider=provider,
            policy=FirstNotExcluded(),
            pool=PoolConfig(health_check=False),
        ) as c,
    ):
        await c.get_user("u-1")
    spans = exporter.get_finished_spans()
    [logical] = by_name(spans, "GetUser logical")
    attempts = by_name(spans, "/meshdemo.v1.UserService/GetUser")
    assert len(attempts) == 2  # The dead endpoint, then the live one.
    assert logical.context is not None
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == logical.context.span_id
        assert attempt.context is not None
        assert attempt.context.trace_id == logical.context.trace_id
    assert [e.name for e in logical.events] == ["hedge"]  # GetUser is hedged
    # The server saw the trace context of the attempt that reached it.
    [metadata] = servicer.metadata
    version, trace_id, span_id, _flags = metadata["traceparent"].split("-")
    assert version == "00"
    assert int(trace_id, 16) == logical.context.trace_id
    assert int(span_id, 16) in {a.context.span_id for a in attempts if a.context}


async def test_a_listing_has_one_logical_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    servicer = FakeReplica("127.0.0.3", name="traced")
    async with (
        servicer,
        UserClient(f"static:///{servicer.address}", tracer_provider=provider) as c,
    ):
        with pytest.raises(Exception, match="UNIMPLEMENTED"):
            async for _ in c.list_users():
                pass
    spans = exporter.get_finished_spans()
    [logical] = by_name(spans, "ListUsers logical")
    [attempt] = by_name(spans, "/meshdemo.v1.UserService/ListUsers")
    assert logical.context is not None
    assert attempt.parent is not None
    assert attempt.parent.span_id == logical.context.span_id
    assert not logical.status.is_ok
    # Health checks leave no span.
    assert not [s for s in spans if "grpc.health" in s.name]


async def test_tracing_off_creates_no_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    servicer = FakeReplica("127.0.0.3", name="quiet")
    async with (
        servicer,
        UserClient(f"static:///{servicer.address}", tracer_provider=provider, tracing=False) as c,
    ):
        await c.get_user("u-1")
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in servicer.metadata[0]


def test_tracing_is_on_only_where_spans_would_go(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from client._client import tracing_configured

    assert tracing_configured(SdkTracerProvider())
    monkeypatch.setattr(otel_trace, "get_tracer_provider", otel_trace.NoOpTracerProvider)
    assert not tracing_configured()
    monkeypatch.setattr(otel_trace, "get_tracer_provider", otel_trace.ProxyTracerProvider)
    assert not tracing_configured()
    monkeypatch.setattr(otel_trace, "get_tracer_provider", SdkTracerProvider)
    assert tracing_configured()
