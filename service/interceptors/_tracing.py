"""Tracing: one OpenTelemetry SERVER span per RPC, health checks left out.

Built on :mod:`._base` like the other layers, so the per-method work (span
name, constant attributes) is done once and a call costs one span, one
context attach and a few attribute writes. (The stock
opentelemetry-instrumentation-grpc aio interceptor rebuilt its wrappers and
a context proxy on every call and halved the replica's throughput; see
docs/PERFORMANCE.md.)

The span follows the OpenTelemetry semantic conventions for gRPC server spans:

* name ``meshdemo.v1.UserService/GetUser`` (``$service/$method``), kind SERVER;
* parent: the W3C context extracted from the call's metadata with the
  global propagator (``traceparent``, ``baggage``, whatever
  ``OTEL_PROPAGATORS`` names);
* attributes ``rpc.system`` = ``grpc``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code`` (the call's final code), ``net.peer.ip`` and
  ``net.peer.port`` (plus ``net.peer.name`` = ``localhost`` on loopback);
* status ERROR only for server faults (UNKNOWN, DEADLINE_EXCEEDED,
  UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); other codes leave it UNSET;
* the span is the current span while the handler (and every inner layer)
  runs, and for response streams it covers the whole stream.

The final code is learnt with :func:`code_of`, the same classification the
logging and metrics layers use: this layer sits outside error mapping, so it
sees grpc's abort exception (the code is then on the context) or a
cancellation. A failure inside tracing is logged and never breaks the call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from service.interceptors._base import CallHook, Context, HookInterceptor, MethodInfo
from service.interceptors._errors import code_of

__all__ = ["SERVER_FAULTS", "UNTRACED_PREFIXES", "TracingInterceptor", "tracing_interceptor"]

#: Methods that never get a span: health checks would drown the traces.
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/",)

#: Codes that mark a server span ERROR (OpenTelemetry gRPC conventions).
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.11.0"
_STATUS_ATTR = "rpc.grpc.status_code"
_LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]"})

_log = logging.getLogger("meshdemo.interceptors")


@functools.lru_cache(maxsize=1024)
def _peer_attributes(peer: str) -> dict[str, str]:
    """``net.peer.*`` of a grpc peer string; cached, as peers repeat per connection.

    ``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000`` give ip and port;
    ``unix:...`` and anything unparsable give nothing.
    """
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return {}
    host, sep, port = unquote(rest.split(",", 1)[0]).rpartition(":")
    if not sep or not host or not port.isdigit():
        return {}
    attributes = {"net.peer.ip": host.strip("[]"), "net.peer.port": port}
    if host in _LOOPBACK:
        attributes["net.peer.name"] = "localhost"
    return attributes


def _carrier(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    # Metadatum items are (key, value) pairs; a later duplicate key wins.
    return dict(metadata or ())


class _Call:
    """A traced call: its span and the token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token


class _ServerSpan(CallHook[_Call | None]):
    __slots__ = ("_attributes", "_name", "_tracer")

    def __init__(self, tracer: trace.Tracer, method: MethodInfo) -> None:
        self._tracer = tracer
        self._name = method.full_name.removeprefix("/")
        self._attributes = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.name,
            _STATUS_ATTR: grpc.StatusCode.OK.value[0],
        }

    def begin(self, context: Context) -> _Call | None:
        # Observability never breaks the call: a failure here means no span.
        try:
            return self._start(context)
        except Exception:
            _log.exception("cannot start a server span", extra={"span": self._name})
            return None

    def _start(self, context: Context) -> _Call:
        metadata: Any = context.invocation_metadata()
        parent = propagate.extract(_carrier(metadata))
        attributes = {**self._attributes, **_peer_attributes(context.peer())}
        span = self._tracer.start_span(
            self._name, parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _Call(span, token)

    def end(
        self, state: _Call | None, context: Context, exc: BaseException | None, sent: int
    ) -> None:
        if state is None:
            return
        try:
            self._finish(state.span, context, exc)
        finally:
            # An abandoned stream may be closed from another task (the async
            # generator finalizer), where the token is foreign; the call's
            # own task is over then, so there is nothing left to restore.
            if exc.__class__ is not GeneratorExit:
                otel_context.detach(state.token)  # type: ignore[arg-type]

    def _finish(self, span: Span, context: Context, exc: BaseException | None) -> None:
        if span.is_recording():
            code = code_of(exc, context)
            # The span started with OK; most calls end OK and skip a write.
            if code is not grpc.StatusCode.OK:
                span.set_attribute(_STATUS_ATTR, code.value[0])
            if code in SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, code.name))
            if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
                # An abort only says how the call ended (the code is set);
                # cancellations are not Exceptions. Anything else is news.
                span.record_exception(exc)
        span.end()


class TracingInterceptor(HookInterceptor):
    """One SERVER span per RPC (see the module doc); health checks are not traced.

    Args:
        tracer_provider: Source of spans; None uses the global provider.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        super().__init__()
        self._tracer = trace.get_tracer(
            "meshdemo.service", tracer_provider=tracer_provider, schema_url=_SCHEMA_URL
        )

    def hook_for(self, method: MethodInfo) -> CallHook[_Call | None] | None:
        """A span for every method but the untraced ones."""
        if method.full_name.startswith(UNTRACED_PREFIXES):
            return None
        return _ServerSpan(self._tracer, method)


def tracing_interceptor(tracer_provider: TracerProvider | None) -> TracingInterceptor:
    """The tracing interceptor, spans from ``tracer_provider`` (None: the global one)."""
    return TracingInterceptor(tracer_provider)
