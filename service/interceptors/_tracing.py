"""Tracing: OpenTelemetry's grpc.aio server interceptor, health checks left out.

One SERVER span per RPC, parented on the caller's ``traceparent``; for
response streams the span covers the whole stream. What the instrumentation
(opentelemetry-instrumentation-grpc, ``_aio_server.py``) records, verified in
its source:

* every span starts with ``rpc.grpc.status_code`` 0 (OK);
* it hands the handler a proxy of the servicer context whose ``abort`` and
  ``set_code`` write the code to ``rpc.grpc.status_code``, and set an ERROR
  span status for server faults only (UNKNOWN, DEADLINE_EXCEEDED,
  UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). That is how codes reach
  spans: the error-mapping layer, just inside this one, aborts through that
  proxy (and sets CANCELLED/DEADLINE_EXCEEDED on cancellation);
* an exception other than a bare ``Exception`` is recorded as a span event
  (so aborts show an ``AbortError`` event), but does not set the code;
  ``asyncio.CancelledError`` and ``GeneratorExit`` are not ``Exception``s
  and pass it silently;
* it does not cache: it wraps the handler on every call.
"""

from __future__ import annotations

import grpc
import grpc.aio
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import TracerProvider

__all__ = ["UNTRACED_PREFIXES", "tracing_interceptor"]

#: Methods that never get a span: health checks would drown the traces.
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/",)


def _traced(details: grpc.HandlerCallDetails) -> bool:
    return not details.method.startswith(UNTRACED_PREFIXES)


def tracing_interceptor(tracer_provider: TracerProvider | None) -> grpc.aio.ServerInterceptor:  # type: ignore[type-arg]
    """The tracing interceptor, spans from ``tracer_provider`` (None: the global one)."""
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[type-arg,no-untyped-call]
        tracer_provider=tracer_provider, filter_=_traced
    )
    return interceptor
