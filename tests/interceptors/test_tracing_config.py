"""configure_tracing (meshdemo.telemetry): the OTEL_* variables decide; no endpoint, no export."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import service.tracing
from meshdemo.telemetry import (
    configure_tracing,
    export_enabled,
    has_span_processors,
    shutdown_tracing,
)

OTEL_VARS = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def providers() -> Iterator[list[TracerProvider]]:
    """Providers made by a test, shut down after it."""
    made: list[TracerProvider] = []
    yield made
    for provider in made:
        shutdown_tracing(provider, timeout_s=1)


def processors(provider: TracerProvider) -> list[Any]:
    # No public accessor exists for a provider's span processors.
    return list(provider._active_span_processor._span_processors)


def test_no_endpoint_means_no_export(providers: list[TracerProvider]) -> None:
    provider = configure_tracing("svc")
    providers.append(provider)
    assert processors(provider) == []
    with provider.get_tracer("t").start_as_current_span("work") as span:
        assert span.get_span_context().is_valid  # trace ids still reach logs
    assert provider.force_flush(timeout_millis=1000)
    shutdown_tracing(provider)


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4399"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4399"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4399",
                "OTEL_TRACES_EXPORTER": "none",
            },
            False,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4399",
                "OTEL_TRACES_EXPORTER": "otlp,none",
            },
            False,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4399",
                "OTEL_TRACES_EXPORTER": "OTLP",
            },
            True,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4399",
                "OTEL_TRACES_EXPORTER": "zipkin",
            },
            False,
        ),
    ],
)
def test_export_enabled(env: dict[str, str], enabled: bool) -> None:
    assert export_enabled(env) is enabled


def test_exporter_none_wins_over_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    provider = configure_tracing("svc")
    providers.append(provider)
    assert processors(provider) == []


def test_service_name_default_and_override(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    default = configure_tracing("meshdemo-user-service")
    providers.append(default)
    assert default.resource.attributes["service.name"] == "meshdemo-user-service"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    named = configure_tracing("meshdemo-user-service")
    providers.append(named)
    assert named.resource.attributes["service.name"] == "from-env"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=mesh")
    attributed = configure_tracing("meshdemo-user-service")
    providers.append(attributed)
    assert attributed.resource.attributes["service.name"] == "from-attrs"
    assert attributed.resource.attributes["team"] == "mesh"


def test_the_service_keeps_its_import_path() -> None:
    assert service.tracing.configure_tracing is configure_tracing
    assert service.tracing.shutdown_tracing is shutdown_tracing
    assert service.tracing.export_enabled is export_enabled


def test_instance_default_names_the_instance_unless_the_environment_does(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    made_up = configure_tracing("svc")
    named = configure_tracing("svc", instance_default="users-0")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7")
    from_env = configure_tracing("svc", instance_default="users-0")
    providers += [made_up, named, from_env]
    assert made_up.resource.attributes["service.instance.id"] not in ("", "users-0")
    assert named.resource.attributes["service.instance.id"] == "users-0"
    assert from_env.resource.attributes["service.instance.id"] == "pod-7"


def test_has_span_processors_tells_whether_spans_go_anywhere(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    from opentelemetry.trace import NoOpTracerProvider

    silent = configure_tracing("svc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    exporting = configure_tracing("svc")
    providers += [silent, exporting]
    assert not has_span_processors(silent)
    assert has_span_processors(exporting)
    assert has_span_processors(NoOpTracerProvider())


def test_sampler_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing("svc")
    providers.append(provider)
    with provider.get_tracer("t").start_as_current_span("work") as span:
        assert not span.is_recording()


def test_shutdown_never_raises() -> None:
    class Broken(TracerProvider):
        def force_flush(self, timeout_millis: int = 30000) -> bool:
            raise RuntimeError("collector exploded")

    shutdown_tracing(Broken())


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, _Collector]]:
    """A real OTLP/gRPC trace collector on 127.0.0.1 port 0."""
    servicer = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


async def test_endpoint_exports_over_otlp_grpc(
    monkeypatch: pytest.MonkeyPatch, collector: tuple[str, _Collector]
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true")
    provider = configure_tracing("exported-svc")
    [processor] = processors(provider)
    assert isinstance(processor, BatchSpanProcessor)
    with provider.get_tracer("t").start_as_current_span("exported work"):
        pass
    # The exporter is synchronous; the collector answers on this loop.
    await asyncio.to_thread(shutdown_tracing, provider, 10.0)
    names = [
        span.name
        for request in received.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert names == ["exported work"]
    service_names = {
        attribute.value.string_value
        for request in received.requests
        for resource_spans in request.resource_spans
        for attribute in resource_spans.resource.attributes
        if attribute.key == "service.name"
    }
    assert service_names == {"exported-svc"}
