"""Client interceptors: bearer tokens, per-method metrics, and one tracing span per attempt.

``UserClient`` uses the tracing ones (with a tracer provider) and, for Chat
only, the token and metrics ones: its other calls carry the token in their
metadata and are timed by the attempt itself (see :func:`client_interceptors`).

grpc.aio files an interceptor object under the FIRST client interceptor class it
inherits, so an object that inherits all four intercepts unary-unary calls
only. Every concern here therefore comes as four small objects, one per call
type, built by a ``*_interceptors()`` function; :func:`client_interceptors`
puts them in their order.

Observability never breaks a call: the metrics recorder only counts, and the
tracing interceptors only start and end spans around the call (the SDK
guards its own span processors). They are ours rather than
opentelemetry-instrumentation-grpc's, whose aio interceptor never ended the
span of an attempt cancelled mid-call: a hedge's loser or a caller's timeout
left no trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc.aio import ClientCallDetails, Metadata
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from client._hedge import HedgeMark
from client._resolver import Address

__all__ = [
    "ATTEMPT_HEDGE",
    "ATTEMPT_PEER",
    "CallMetrics",
    "MethodStats",
    "TokenProvider",
    "auth_interceptors",
    "client_interceptors",
    "method_name",
    "metrics_interceptors",
    "tracing_interceptors",
]

#: Returns the current bearer token, or None to send none. Called once per
#: attempt, so a provider may refresh an expiring token.
TokenProvider = Callable[[], str | None]

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_OK = grpc.StatusCode.OK

# grpc-stubs declares the interceptor classes generic; at run time they are not.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


def method_name(full_method: str | bytes) -> str:
    """The short method name of ``/package.Service/Method`` (``Method``)."""
    text = full_method.decode() if isinstance(full_method, bytes) else full_method
    return text.rsplit("/", 1)[-1]


def _full_method(details: ClientCallDetails) -> str:
    method: str | bytes = details.method
    return method.decode() if isinstance(method, bytes) else method


def _replace_metadata(details: ClientCallDetails, metadata: Metadata) -> ClientCallDetails:
    return ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# --- bearer token -------------------------------------------------------------------------


class _AuthBase:
    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider

    def _with_token(self, details: ClientCallDetails) -> ClientCallDetails:
        token = self._provider()
        if not token:
            return details
        metadata = Metadata(*tuple(details.metadata or ()))
        # A token already present (set by the caller for this call) wins.
        if "authorization" not in metadata:
            metadata.add("authorization", f"Bearer {token}")
        return _replace_metadata(details, metadata)


class _AuthUnaryUnary(_AuthBase, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _AuthUnaryStream(_AuthBase, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _AuthStreamUnary(_AuthBase, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


class _AuthStreamStream(_AuthBase, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


def auth_interceptors(provider: TokenProvider) -> list[Any]:
    """Four interceptors adding ``authorization: Bearer <token>`` to every call."""
    return [
        _AuthUnaryUnary(provider),
        _AuthUnaryStream(provider),
        _AuthStreamUnary(provider),
        _AuthStreamStream(provider),
    ]


# --- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodStats:
    """Counters of one method, over every attempt on every endpoint."""

    calls: int
    failures: int
    total_latency: float
    max_latency: float
    codes: Mapping[str, int]

    @property
    def mean_latency(self) -> float:
        """Mean seconds per attempt (0 before the first one)."""
        return self.total_latency / self.calls if self.calls else 0.0


class _MethodCounter:
    __slots__ = ("calls", "codes", "failures", "max_latency", "total_latency")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.total_latency = 0.0
        self.max_latency = 0.0
        #: Failures by status code (OK is ``calls - failures``), named only in snapshots.
        self.codes: dict[grpc.StatusCode, int] = {}


class CallMetrics:
    """Per-method attempt counts, status codes and latency, kept in the client's stats."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._methods: dict[str, _MethodCounter] = {}

    def record(self, method: str, code: grpc.StatusCode, latency: float) -> None:
        """Count one finished attempt of ``method`` (a short name, e.g. ``GetUser``)."""
        counter = self._methods.get(method)
        if counter is None:
            counter = self._methods[method] = _MethodCounter()
        counter.calls += 1
        counter.total_latency += latency
        if latency > counter.max_latency:
            counter.max_latency = latency
        if code is not _OK:  # OK is calls - failures: no dictionary work for an answer
            counter.failures += 1
            codes = counter.codes
            codes[code] = codes.get(code, 0) + 1

    def snapshot(self) -> dict[str, MethodStats]:
        """An immutable copy of the counters, by method name."""
        return {
            name: MethodStats(
                c.calls,
                c.failures,
                c.total_latency,
                c.max_latency,
                _code_counts(c),
            )
            for name, c in sorted(self._methods.items())
        }


def _code_counts(counter: _MethodCounter) -> dict[str, int]:
    ok = counter.calls - counter.failures
    counts = {code.name: count for code, count in counter.codes.items()}
    return {_OK.name: ok, **counts} if ok else counts


class _MetricsBase:
    def __init__(self, metrics: CallMetrics) -> None:
        self._metrics = metrics

    def _skip(self, details: ClientCallDetails) -> bool:
        return _full_method(details).startswith(_HEALTH_PREFIX)

    async def _after_unary(self, call: Any, details: ClientCallDetails, start: float) -> Any:
        # Waiting for the code here costs nothing: the caller awaits the same response.
        code = await call.code()
        self._metrics.record(method_name(details.method), code, self._metrics.clock() - start)
        return call

    async def _observe_stream(
        self, call: Any, details: ClientCallDetails, start: float
    ) -> AsyncIterator[Any]:
        try:
            async for response in call:
                yield response
        finally:
            # A consumer that stopped early leaves the call running: count it as cancelled
            # rather than wait for its end here.
            code = await call.code() if call.done() else grpc.StatusCode.CANCELLED
            self._metrics.record(method_name(details.method), code, self._metrics.clock() - start)


class _MetricsUnaryUnary(_MetricsBase, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self._skip(details):
            return await continuation(details, request)
        start = self._metrics.clock()
        return await self._after_unary(await continuation(details, request), details, start)


class _MetricsUnaryStream(_MetricsBase, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if self._skip(details):
            return await continuation(details, request)
        start = self._metrics.clock()
        return self._observe_stream(await continuation(details, request), details, start)


class _MetricsStreamUnary(_MetricsBase, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        start = self._metrics.clock()
        return await self._after_unary(await continuation(details, requests), details, start)


class _MetricsStreamStream(_MetricsBase, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        start = self._metrics.clock()
        return self._observe_stream(await continuation(details, requests), details, start)


def metrics_interceptors(metrics: CallMetrics) -> list[Any]:
    """Four interceptors recording every attempt (health checks left out) into ``metrics``."""
    return [
        _MetricsUnaryUnary(metrics),
        _MetricsUnaryStream(metrics),
        _MetricsStreamUnary(metrics),
        _MetricsStreamStream(metrics),
    ]


# --- tracing ------------------------------------------------------------------------------

_STATUS_ATTR = "rpc.grpc.status_code"

#: The address the current attempt dials, set by the client around each attempt: an
#: interceptor sees only the method, and a waterfall wants to know which replica failed.
ATTEMPT_PEER: contextvars.ContextVar[Address | None] = contextvars.ContextVar(
    "meshdemo_attempt_peer", default=None
)

#: Which copy of a hedged call the current attempt is (None: the method is not hedged),
#: set by the client around each copy; its ``lost`` turns true before a loser is cancelled.
ATTEMPT_HEDGE: contextvars.ContextVar[HedgeMark | None] = contextvars.ContextVar(
    "meshdemo_attempt_hedge", default=None
)


def _finish_attempt(
    span: Span, code: grpc.StatusCode, details: str | None, hedge: HedgeMark | None = None
) -> None:
    """End an attempt's span with its final code; every code but OK is an ERROR.

    A cancelled attempt (the caller gave up, or a hedge's loser) says so in
    its code and in ``meshdemo.cancelled``, so a waterfall can tell it from a
    failure; a hedge's loser also has ``meshdemo.hedge.cancelled``.
    """
    try:
        span.set_attribute(_STATUS_ATTR, code.value[0])
        if code is grpc.StatusCode.CANCELLED:
            span.set_attribute("meshdemo.cancelled", True)
            if hedge is not None and hedge.lost:
                span.set_attribute("meshdemo.hedge.cancelled", True)
                details = "lost the hedge race"
        if code is not grpc.StatusCode.OK:
            span.set_status(
                Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name)
            )
    finally:
        span.end()


class _TracingBase:
    """Starts an attempt's CLIENT span and puts its W3C context on the call's metadata."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def _start(self, details: ClientCallDetails) -> tuple[Span | None, ClientCallDetails]:
        if not _not_health(details):
            return None, details
        method = _full_method(details)
        service, _, name = method.lstrip("/").partition("/")
        # Named like OpenTelemetry's grpc instrumentation (full method, leading slash);
        # the parent is the current span: the client's logical call.
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
        }
        peer = ATTEMPT_PEER.get()
        if peer is not None:
            attributes["server.address"] = peer.host
            attributes["server.port"] = peer.port
        hedge = ATTEMPT_HEDGE.get()
        if hedge is not None:
            attributes["meshdemo.hedge.number"] = hedge.number
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        metadata = Metadata(*tuple(details.metadata or ()))
        propagate.inject(metadata, context=trace.set_span_in_context(span))
        return span, _replace_metadata(details, metadata)

    async def _traced_unary(self, span: Span, call_started: Awaitable[Any]) -> Any:
        hedge = ATTEMPT_HEDGE.get()
        try:
            call = await call_started
            code = await call.code()
        except asyncio.CancelledError:
            _finish_attempt(span, grpc.StatusCode.CANCELLED, "cancelled by the caller", hedge)
            raise
        except grpc.RpcError as err:
            _finish_attempt(span, err.code(), err.details())
            raise
        except BaseException as exc:
            span.record_exception(exc)
            _finish_attempt(span, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        _finish_attempt(span, code, None if code is grpc.StatusCode.OK else await call.details())
        return call

    async def _traced_stream(self, span: Span, call: Any) -> AsyncIterator[Any]:
        hedge = ATTEMPT_HEDGE.get()
        ended = False
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            ended = True
            _finish_attempt(span, err.code(), err.details())
            raise
        finally:
            if not ended:
                # Not done: the reader stopped early or was cancelled, and the call with it.
                done = call.done()
                code = await call.code() if done else grpc.StatusCode.CANCELLED
                details = await call.details() if done else "stopped early"
                _finish_attempt(span, code, details, hedge)


class _TracingUnaryUnary(_TracingBase, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        if span is None:
            return await continuation(details, request)
        return await self._traced_unary(span, continuation(details, request))


class _TracingUnaryStream(_TracingBase, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        if span is None:
            return await continuation(details, request)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            _finish_attempt(span, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        return self._traced_stream(span, call)


class _TracingStreamUnary(_TracingBase, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        span, details = self._start(details)
        if span is None:
            return await continuation(details, requests)
        return await self._traced_unary(span, continuation(details, requests))


class _TracingStreamStream(_TracingBase, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        span, details = self._start(details)
        if span is None:
            return await continuation(details, requests)
        try:
            call = await continuation(details, requests)
        except BaseException as exc:
            _finish_attempt(span, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        return self._traced_stream(span, call)


def _not_health(details: ClientCallDetails) -> bool:
    """Whether a call is traced: every call but health checks (one prefix test)."""
    return not _full_method(details).startswith(_HEALTH_PREFIX)


def tracing_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """Four interceptors: one CLIENT span per attempt, its W3C context on the wire.

    Each span ends with ``rpc.grpc.status_code``; any code but OK is an ERROR,
    CANCELLED included (the caller gave up, or a hedge lost the race: then
    ``meshdemo.cancelled`` is true). Health checks are left out (see
    :func:`_not_health`). With ``tracer_provider`` None the global provider is used.
    """
    tracer = trace.get_tracer("meshdemo.client.attempts", tracer_provider=tracer_provider)
    return [
        _TracingUnaryUnary(tracer),
        _TracingUnaryStream(tracer),
        _TracingStreamUnary(tracer),
        _TracingStreamStream(tracer),
    ]


def client_interceptors(
    *,
    token: TokenProvider | None,
    metrics: CallMetrics | None,
    tracer_provider: TracerProvider | None = None,
    tracing: bool = True,
    streams_only: bool = False,
) -> list[Any]:
    """All client interceptors, outermost first: tracing, metrics, then the token.

    The tracing span encloses the metrics timing; the token is added last so no
    interceptor sees (or could log) it before it goes on the wire.

    With ``streams_only`` the token and metrics interceptors are made for
    stream-stream calls only (Chat): ``UserClient`` puts the token in each
    attempt's metadata and times the attempt itself, because grpc.aio runs any
    call type that has an interceptor through its intercepted path (an extra
    task and wrappers per call), and with no tracing that leaves unary calls
    and ListUsers with none at all.
    """
    chain: list[Any] = []
    if tracing:
        chain += tracing_interceptors(tracer_provider)
    if metrics is not None:
        chain += [_MetricsStreamStream(metrics)] if streams_only else metrics_interceptors(metrics)
    if token is not None:
        chain += [_AuthStreamStream(token)] if streams_only else auth_interceptors(token)
    return chain
