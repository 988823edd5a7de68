"""Fixtures: a real grpc.aio server on 127.0.0.1 port 0 behind the interceptor
chain, a real channel, in-memory spans, a private metrics registry and the
log lines parsed back from JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshdemo.v1 import user_pb2_grpc
from service.auth import TokenVerifier, mint_token
from service.interceptors import build_server_interceptors
from service.logs import JsonFormatter
from service.metrics import ServerMetrics
from tests.interceptors.servicer import TestServicer

if TYPE_CHECKING:
    from meshdemo.v1.user_pb2_grpc import UserServiceAsyncStub

#: Long enough for HS512 too, so tests can mint foreign-algorithm tokens without warnings.
SECRET = "interceptor-tests-secret-" + "0123456789abcdef" * 3
Metadata = tuple[tuple[str, str], ...]


def trailers(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The trailing metadata of a failed call, by key."""
    return dict(cast(Any, err.trailing_metadata()) or ())


def bearer(token: str) -> Metadata:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def admin_md(sub: str = "alice") -> Metadata:
    """Metadata of an admin."""
    return bearer(mint_token(SECRET, sub, ["admin"], 3600))


def reader_md(sub: str = "bob") -> Metadata:
    """Metadata of a caller with the user role only."""
    return bearer(mint_token(SECRET, sub, ["user"], 3600))


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` holds: server-side effects may trail the reply."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


class LogCapture(logging.Handler):
    """Keeps every record as the JSON line the service would print, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        assert "\n" not in line
        self.lines.append(json.loads(line))

    def access(self) -> list[dict[str, Any]]:
        """The per-RPC access lines."""
        return [line for line in self.lines if line["message"] == "rpc"]


@dataclass
class Harness:
    """A started server behind an interceptor chain, and a channel to it."""

    address: str
    channel: grpc.aio.Channel
    stub: UserServiceAsyncStub
    servicer: TestServicer
    exporter: InMemorySpanExporter
    metrics: ServerMetrics
    logger: logging.Logger
    logs: LogCapture

    def spans(self) -> Sequence[ReadableSpan]:
        """Finished server spans."""
        return self.exporter.get_finished_spans()

    async def wait_spans(self, count: int) -> Sequence[ReadableSpan]:
        """Finished spans once there are ``count`` (a span may end after the reply)."""
        await eventually(lambda: len(self.spans()) >= count)
        spans = self.spans()
        assert len(spans) == count
        return spans

    async def wait_access(self, count: int) -> list[dict[str, Any]]:
        """Access lines once there are ``count``."""
        await eventually(lambda: len(self.logs.access()) >= count)
        lines = self.logs.access()
        assert len(lines) == count
        return lines

    def sample(self, name: str, **labels: str) -> float | None:
        """A sample of the server's private registry."""
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def log_capture() -> Any:
    """A private logger (not propagating) whose records are kept as parsed JSON."""
    logger = logging.getLogger(f"test.rpc.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    capture = LogCapture()
    logger.addHandler(capture)
    yield logger, capture
    logger.removeHandler(capture)


@pytest.fixture
def exporter() -> Any:
    """In-memory span exporter, fresh per test."""
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Any:
    """A tracer provider exporting synchronously into ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@contextlib.asynccontextmanager
async def running_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]], servicer: TestServicer
) -> AsyncIterator[str]:
    """A started server with ``servicer`` and a health servicer; yields its address."""
    server = grpc.aio.server(interceptors=list(interceptors))
    user_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def harness_for(
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
    *,
    servicer: TestServicer,
    exporter: InMemorySpanExporter,
    metrics: ServerMetrics,
    log: tuple[logging.Logger, LogCapture],
) -> AsyncIterator[Harness]:
    """A :class:`Harness` around a server with ``interceptors``."""
    async with (
        running_server(interceptors, servicer) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        yield Harness(
            address=address,
            channel=channel,
            stub=user_pb2_grpc.UserServiceStub(channel),
            servicer=servicer,
            exporter=exporter,
            metrics=metrics,
            logger=log[0],
            logs=log[1],
        )


@pytest.fixture
def servicer() -> TestServicer:
    """The test servicer; override in a module for another one."""
    return TestServicer()


@pytest.fixture
async def harness(
    servicer: TestServicer,
    exporter: InMemorySpanExporter,
    tracer_provider: TracerProvider,
    log_capture: tuple[logging.Logger, LogCapture],
) -> AsyncIterator[Harness]:
    """The full chain (auth on with SECRET, metrics, tracing, logging)."""
    metrics = ServerMetrics()
    chain = build_server_interceptors(
        verifier=TokenVerifier(SECRET),
        metrics=metrics,
        tracer_provider=tracer_provider,
        logger=log_capture[0],
    )
    async with harness_for(
        chain, servicer=servicer, exporter=exporter, metrics=metrics, log=log_capture
    ) as running:
        yield running
