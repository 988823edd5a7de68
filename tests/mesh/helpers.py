"""Helpers for the trace tests: real OTLP exporters and a free loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on: bound, then closed at once."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def otlp_provider(endpoint: str, attributes: Mapping[str, str]) -> TracerProvider:
    """An SDK provider exporting through the real OTLP/gRPC exporter to ``endpoint``."""
    provider = TracerProvider(resource=Resource.create(dict(attributes)))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    return provider


async def flush(provider: TracerProvider) -> bool:
    """Flush in a thread: the exporter is synchronous and the receiver answers on this loop."""
    return await asyncio.to_thread(provider.force_flush, 10_000)


async def shutdown(provider: TracerProvider) -> None:
    """Flush and shut down in a thread (see :func:`flush`)."""
    await asyncio.to_thread(provider.shutdown)


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until it is true, or fail after ``timeout`` seconds."""
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)
