"""An OTLP/gRPC trace receiver on loopback: the mesh's stand-in for Jaeger's collector.

Replicas and clients export to it through the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``, exactly as they export to Jaeger in the
cluster. Every span becomes a :class:`~mesh._spans.SpanRecord` in the
:class:`~mesh._spans.SpanStore`; with ``forward_to`` (a Jaeger on the laptop)
each export request is also sent on, unchanged.

A receiver never slows or fails an exporter (observability never breaks a
call): ``Export`` answers as soon as the spans are written, forwarding runs
in its own task behind a bounded queue, and a request that finds the queue
full, or that the upstream refuses or times out, is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from mesh._spans import AttributeValue, SpanEvent, SpanRecord, SpanStore

__all__ = ["ReceiverStats", "TraceReceiver", "records_from_request"]

_log = logging.getLogger("meshdemo.mesh.receiver")

#: Attributes kept per span or event; the rest are dropped (records stay small).
MAX_ATTRIBUTES = 32
#: Characters kept of a string attribute (stack traces are long).
MAX_VALUE_CHARS = 300

ExportRequest = trace_service_pb2.ExportTraceServiceRequest


# --- proto to records ------------------------------------------------------------------------


def _scalar(value: common_pb2.AnyValue) -> AttributeValue | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value[:MAX_VALUE_CHARS]
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return value.bytes_value.hex()[:MAX_VALUE_CHARS]
    return None


def _value(value: common_pb2.AnyValue) -> AttributeValue | None:
    """A JSON-able attribute value: scalars, lists of scalars, anything else as short text."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        items = [_scalar(v) for v in value.array_value.values]
        return [i for i in items if i is not None and not isinstance(i, list)]
    if kind == "kvlist_value":
        flat = {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
        return json.dumps(flat, default=str)[:MAX_VALUE_CHARS]
    return _scalar(value)


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, AttributeValue]:
    flat: dict[str, AttributeValue] = {}
    for pair in pairs:
        if len(flat) >= MAX_ATTRIBUTES:
            break
        value = _value(pair.value)
        if value is not None:
            flat[pair.key] = value
    return flat


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def _record(span: trace_pb2.Span, service: str, instance: str) -> SpanRecord:
    attributes = _attributes(span.attributes)
    replica = attributes.get("meshdemo.replica")
    return SpanRecord(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=_enum_name(trace_pb2.Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
        service=service,
        # The span's own replica attribute is explicit; a resource's instance id
        # may be the UUID the SDK makes up when nobody names the instance.
        instance=replica if isinstance(replica, str) and replica else instance,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status=_enum_name(trace_pb2.Status.StatusCode.Name(span.status.code), "STATUS_CODE_"),
        status_message=span.status.message[:MAX_VALUE_CHARS],
        attributes=attributes,
        events=tuple(
            SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events
        ),
    )


def records_from_request(request: ExportRequest) -> list[SpanRecord]:
    """Every span of an OTLP export request as a flat record.

    ``service`` and ``instance`` come from each resource's ``service.name`` and
    ``service.instance.id`` (the instance falls back to the span attribute
    ``meshdemo.replica``).
    """
    records: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource: Mapping[str, Any] = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        instance = str(resource.get("service.instance.id", ""))
        for scope_spans in resource_spans.scope_spans:
            records.extend(_record(span, service, instance) for span in scope_spans.spans)
    return records


def _span_count(request: ExportRequest) -> int:
    return sum(
        len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
    )


# --- forwarding ------------------------------------------------------------------------------


def _channel_for(endpoint: str) -> grpc.aio.Channel:
    """A channel to an OTLP gRPC endpoint: ``http://h:p`` (plaintext), ``https://h:p``, ``h:p``."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parts.netloc:
        raise ValueError(f"not an OTLP gRPC endpoint: {endpoint!r}")
    if parts.scheme == "https":
        return grpc.aio.secure_channel(parts.netloc, grpc.ssl_channel_credentials())
    if parts.scheme in ("http", "grpc"):
        return grpc.aio.insecure_channel(parts.netloc)
    raise ValueError(f"not an OTLP gRPC endpoint: {endpoint!r} (use http:// or https://)")


class _Forwarder:
    """Sends export requests on to an upstream collector from one task, dropping when behind."""

    def __init__(self, endpoint: str, stats: ReceiverStats, queue_size: int, timeout: float):
        self.endpoint = endpoint
        self._stats = stats
        self._timeout = timeout
        self._channel = _channel_for(endpoint)
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._queue: asyncio.Queue[ExportRequest] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="otlp-forwarder")

    def offer(self, request: ExportRequest, spans: int) -> None:
        """Queue ``request``; when the queue is full it is dropped (never waits)."""
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self._stats.dropped += spans

    async def _run(self) -> None:
        while True:
            request = await self._queue.get()
            try:
                await self._send(request)
            finally:
                self._queue.task_done()

    async def _send(self, request: ExportRequest) -> None:
        spans = _span_count(request)
        try:
            await self._stub.Export(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            self._stats.dropped += spans
            if not self._failing:  # Log the change, not every request.
                _log.warning(
                    "cannot forward spans; dropping them until it answers",
                    extra={"upstream": self.endpoint, "code": err.code().name},
                )
            self._failing = True
            return
        self._stats.forwarded += spans
        if self._failing:
            _log.info("forwarding spans again", extra={"upstream": self.endpoint})
        self._failing = False

    async def close(self, drain_timeout: float) -> None:
        """Give queued requests ``drain_timeout`` seconds, then stop and close the channel."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):  # wait_for (3.11) can drop a cancel
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stats.dropped += sum(_span_count(r) for r in _drain(self._queue))
        await self._channel.close(None)


def _drain(queue: asyncio.Queue[ExportRequest]) -> list[ExportRequest]:
    left: list[ExportRequest] = []
    while not queue.empty():
        left.append(queue.get_nowait())
    return left


# --- the receiver ----------------------------------------------------------------------------


@dataclass
class ReceiverStats:
    """Counters of a receiver, in spans.

    Attributes:
        received: Spans received in export requests.
        stored: Spans written to the span store.
        forwarded: Spans the upstream collector accepted.
        dropped: Spans not forwarded: queue full, upstream down, slow or refusing.
        write_errors: Export requests whose spans could not be written (disk full...).
    """

    received: int = 0
    stored: int = 0
    forwarded: int = 0
    dropped: int = 0
    write_errors: int = 0


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: TraceReceiver) -> None:
        self._receiver = receiver

    async def Export(
        self, request: ExportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._accept(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class TraceReceiver:
    """An OTLP/gRPC ``TraceService/Export`` server writing spans to a SpanStore.

    Use::

        receiver = TraceReceiver(SpanStore(state_dir), forward_to=user_endpoint)
        port = await receiver.start()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        await receiver.stop()

    A tracer provider in the same process as the receiver (the demo's load
    generator) must flush and shut down off the event loop, e.g.
    ``await asyncio.to_thread(provider.shutdown)``: the OTLP exporter is
    synchronous and the receiver answers on the loop, so a flush on the loop
    would wait for itself until the exporter's timeout.

    Args:
        store: Where spans go.
        forward_to: An upstream OTLP gRPC endpoint (``http://127.0.0.1:4317``)
            that gets every export request as is, or None.
        queue_size: Export requests waiting to be forwarded, beyond which they are dropped.
        forward_timeout: Seconds an upstream gets per request before it is dropped.
    """

    def __init__(
        self,
        store: SpanStore,
        *,
        forward_to: str | None = None,
        queue_size: int = 256,
        forward_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.forward_to = forward_to or None
        self.stats = ReceiverStats()
        self._queue_size = queue_size
        self._forward_timeout = forward_timeout
        self._server: grpc.aio.Server | None = None
        self._forwarder: _Forwarder | None = None
        self._host = ""
        self._port = 0

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"TraceReceiver({self.endpoint or 'stopped'}, received={s.received}, "
            f"forwarded={s.forwarded}, dropped={s.dropped})"
        )

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`start`)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``http://HOST:PORT``, the value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` ("" before start)."""
        if not self._port:
            return ""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def spans_received(self) -> int:
        """Spans received so far."""
        return self.stats.received

    @property
    def spans_forwarded(self) -> int:
        """Spans the upstream accepted so far."""
        return self.stats.forwarded

    @property
    def spans_dropped(self) -> int:
        """Spans that could not be forwarded."""
        return self.stats.dropped

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind ``host:port`` (0: ephemeral) and serve; returns the bound port.

        Raises:
            OSError: The address cannot be bound.
            ValueError: ``forward_to`` is not an OTLP gRPC endpoint.
            RuntimeError: Already started.
        """
        if self._server is not None:
            raise RuntimeError("the receiver is already started")
        forwarder = (
            _Forwarder(self.forward_to, self.stats, self._queue_size, self._forward_timeout)
            if self.forward_to
            else None
        )
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)  # type: ignore[no-untyped-call]
        bracketed = f"[{host}]" if ":" in host else host
        bound = server.add_insecure_port(f"{bracketed}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind the trace receiver to {host}:{port}")
        await server.start()
        self._server, self._forwarder = server, forwarder
        self._host, self._port = host, bound
        if forwarder is not None:
            forwarder.start()
        return bound

    async def stop(self, grace: float = 0.5) -> None:
        """Stop serving, give queued forwards ``grace`` seconds, close everything (idempotent)."""
        server, forwarder = self._server, self._forwarder
        self._server = self._forwarder = None
        if server is not None:
            await server.stop(grace)
        if forwarder is not None:
            await forwarder.close(grace)
        self._port = 0

    def _accept(self, request: ExportRequest) -> None:
        """Store and queue one export request; never raises (the exporter is always answered)."""
        spans = _span_count(request)
        self.stats.received += spans
        try:
            self.stats.stored += self.store.append(records_from_request(request))
        except (OSError, ValueError):
            self.stats.write_errors += 1
            _log.exception("cannot store spans", extra={"path": str(self.store.path)})
        if self._forwarder is not None:
            self._forwarder.offer(request, spans)
