"""The OTLP/gRPC receiver, fed by the real OpenTelemetry SDK exporter over loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from mesh._receiver import MAX_ATTRIBUTES, MAX_VALUE_CHARS, TraceReceiver, records_from_request
from mesh._spans import SpanStore, read_spans
from tests.mesh.helpers import flush, free_port, otlp_provider, shutdown, wait_for


def _emit(provider: Any, count: int = 1) -> None:
    tracer = provider.get_tracer("test")
    for n in range(count):
        with tracer.start_as_current_span(f"op-{n}", kind=trace.SpanKind.SERVER):
            pass


async def test_sdk_spans_become_records(receiver: TraceReceiver) -> None:
    assert receiver.endpoint == f"http://127.0.0.1:{receiver.port}"
    provider = otlp_provider(
        receiver.endpoint, {"service.name": "svc", "service.instance.id": "users-1"}
    )
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent", kind=trace.SpanKind.SERVER) as parent:
        parent.set_attribute("rpc.method", "GetUser")
        parent.add_event("retry", {"retry": 1, "code": "UNAVAILABLE"})
        with tracer.start_as_current_span("child") as child:
            child.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
    assert await flush(provider)
    await shutdown(provider)
    records = {r.name: r for r in read_spans(receiver.store.state_dir)}
    assert set(records) == {"parent", "child"}
    p, c = records["parent"], records["child"]
    assert p.trace_id == f"{parent.get_span_context().trace_id:032x}"
    assert p.span_id == f"{parent.get_span_context().span_id:016x}"
    assert (p.parent_span_id, c.parent_span_id) == ("", p.span_id)
    assert (p.kind, c.kind) == ("SERVER", "INTERNAL")
    assert (p.service, p.instance) == ("svc", "users-1")
    assert (c.status, c.status_message) == ("ERROR", "boom")
    assert p.attributes["rpc.method"] == "GetUser"
    assert [(e.name, dict(e.attributes)) for e in p.events] == [
        ("retry", {"retry": 1, "code": "UNAVAILABLE"})
    ]
    assert p.start_ns <= c.start_ns <= c.end_ns <= p.end_ns
    assert receiver.stats.received == receiver.stats.stored == 2
    assert receiver.stats.dropped == receiver.stats.forwarded == 0


async def test_the_replica_attribute_wins_over_the_resource_instance_id(
    receiver: TraceReceiver,
) -> None:
    # The SDK names every instance with a random UUID unless told otherwise.
    provider = otlp_provider(receiver.endpoint, {"service.name": "svc"})
    assert provider.resource.attributes["service.instance.id"]
    with provider.get_tracer("t").start_as_current_span("work") as span:
        span.set_attribute("meshdemo.replica", "users-7")
    await shutdown(provider)
    [record] = read_spans(receiver.store.state_dir)
    assert record.instance == "users-7"


async def test_forwards_every_request_to_the_upstream(tmp_path: Path) -> None:
    upstream = TraceReceiver(SpanStore(tmp_path / "upstream"))
    await upstream.start()
    local = TraceReceiver(SpanStore(tmp_path / "local"), forward_to=upstream.endpoint)
    await local.start()
    try:
        provider = otlp_provider(local.endpoint, {"service.name": "svc"})
        _emit(provider, 5)
        await shutdown(provider)
        await wait_for(lambda: local.stats.forwarded == 5)
        assert sorted(r.name for r in read_spans(tmp_path / "upstream")) == [
            f"op-{n}" for n in range(5)
        ]
        assert len(read_spans(tmp_path / "local")) == 5
        assert local.stats.dropped == 0
    finally:
        await local.stop()
        await upstream.stop()


async def test_an_upstream_that_is_down_drops_and_never_blocks(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    receiver = TraceReceiver(SpanStore(tmp_path), forward_to=dead, forward_timeout=1.0)
    await receiver.start()
    try:
        provider = otlp_provider(receiver.endpoint, {"service.name": "svc"})
        _emit(provider, 3)
        started = time.monotonic()
        assert await flush(provider)
        assert time.monotonic() - started < 2.0
        await shutdown(provider)
        await wait_for(lambda: receiver.stats.dropped == 3)
        assert receiver.stats.forwarded == 0
        assert len(read_spans(tmp_path)) == 3  # Kept locally all the same.
    finally:
        await receiver.stop()


class _StalledCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An upstream that accepts a request and answers only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def Export(self, request: Any, context: Any) -> Any:
        self.calls += 1
        await self.release.wait()
        return trace_service_pb2.ExportTraceServiceResponse()


def _request(name: str, spans: int = 1) -> trace_service_pb2.ExportTraceServiceRequest:
    scope = trace_pb2.ScopeSpans(
        spans=[
            trace_pb2.Span(
                trace_id=bytes(range(16)),
                span_id=(n + 1).to_bytes(8, "big"),
                name=name,
                start_time_unix_nano=1,
                end_time_unix_nano=2,
            )
            for n in range(spans)
        ]
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[scope])]
    )


async def test_a_slow_upstream_fills_the_queue_and_the_rest_is_dropped(tmp_path: Path) -> None:
    collector = _StalledCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    receiver = TraceReceiver(
        SpanStore(tmp_path), forward_to=f"127.0.0.1:{port}", queue_size=1, forward_timeout=10.0
    )
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            await stub.Export(_request("in-flight"), timeout=2)
            await wait_for(lambda: collector.calls == 1)
            started = time.monotonic()
            for name in ("queued", "dropped-1", "dropped-2"):
                await stub.Export(_request(name, spans=2), timeout=2)
            assert time.monotonic() - started < 1.0  # Answered at once, upstream stalled.
        assert receiver.stats.dropped == 4
        collector.release.set()
        await wait_for(lambda: receiver.stats.forwarded == 3)
        assert receiver.stats.received == receiver.stats.stored == 7
    finally:
        collector.release.set()
        await receiver.stop()
        await server.stop(None)


async def test_spans_that_cannot_be_written_are_counted_and_the_export_succeeds(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    receiver = TraceReceiver(SpanStore(blocker))
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            await stub.Export(_request("lost"), timeout=2)
        assert (receiver.stats.received, receiver.stats.write_errors) == (1, 1)
        assert receiver.stats.stored == 0
    finally:
        await receiver.stop()


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1:4317", "http://"])
async def test_a_bad_forward_endpoint_is_refused_at_start(tmp_path: Path, endpoint: str) -> None:
    receiver = TraceReceiver(SpanStore(tmp_path), forward_to=endpoint)
    with pytest.raises(ValueError, match="OTLP gRPC endpoint"):
        await receiver.start()
    assert receiver.endpoint == ""


async def test_start_twice_is_refused_and_stop_is_idempotent(receiver: TraceReceiver) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await receiver.start()
    await receiver.stop()
    await receiver.stop()
    assert receiver.endpoint == ""


def _kv(key: str, value: common_pb2.AnyValue) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=value)


def test_attribute_values_are_flattened_and_capped() -> None:
    values = [
        _kv("text", common_pb2.AnyValue(string_value="x" * 1000)),
        _kv("flag", common_pb2.AnyValue(bool_value=True)),
        _kv("n", common_pb2.AnyValue(int_value=7)),
        _kv("f", common_pb2.AnyValue(double_value=0.5)),
        _kv("raw", common_pb2.AnyValue(bytes_value=b"\x01\x02")),
        _kv(
            "list",
            common_pb2.AnyValue(
                array_value=common_pb2.ArrayValue(
                    values=[common_pb2.AnyValue(int_value=1), common_pb2.AnyValue(string_value="a")]
                )
            ),
        ),
        _kv(
            "map",
            common_pb2.AnyValue(
                kvlist_value=common_pb2.KeyValueList(
                    values=[_kv("k", common_pb2.AnyValue(int_value=1))]
                )
            ),
        ),
        _kv("empty", common_pb2.AnyValue()),
    ]
    values += [_kv(f"extra-{n}", common_pb2.AnyValue(int_value=n)) for n in range(50)]
    span = trace_pb2.Span(
        trace_id=b"\xab" * 16,
        span_id=b"\x01" * 8,
        name="s",
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        attributes=values,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="bad"),
    )
    resource = resource_pb2.Resource(
        attributes=[_kv("service.name", common_pb2.AnyValue(string_value="svc"))]
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource, scope_spans=[trace_pb2.ScopeSpans(spans=[span])]
            )
        ]
    )
    [record] = records_from_request(request)
    attrs = record.attributes
    assert attrs["text"] == "x" * MAX_VALUE_CHARS
    assert (attrs["flag"], attrs["n"], attrs["f"], attrs["raw"]) == (True, 7, 0.5, "0102")
    assert attrs["list"] == [1, "a"]
    assert attrs["map"] == '{"k": 1}'
    assert "empty" not in attrs
    assert len(attrs) == MAX_ATTRIBUTES
    assert (record.trace_id, record.parent_span_id) == ("ab" * 16, "")
    assert (record.kind, record.status, record.status_message) == ("CLIENT", "ERROR", "bad")
    assert (record.service, record.instance) == ("svc", "")


@pytest.mark.slow
async def test_a_replica_process_exports_to_the_receiver_under_its_own_name(
    receiver: TraceReceiver, tmp_path: Path
) -> None:
    """``python -m service`` with OTEL_EXPORTER_OTLP_ENDPOINT: the way the mesh runs replicas."""
    from meshdemo.v1 import user_pb2, user_pb2_grpc
    from service.testing import ReplicaProcess, admin_token

    replica = ReplicaProcess(
        "127.0.0.2",
        store_url=f"sqlite:///{tmp_path / 'users.db'}",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "MESH_REPLICA_NAME": "users-4"},
    )
    async with replica:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetUser(
                    user_pb2.GetUserRequest(id="u-1"),
                    metadata=(("authorization", f"Bearer {admin_token()}"),),
                )
        assert await replica.terminate() == 0  # Spans are flushed on the way out.
    spans = {s.name: s for s in read_spans(receiver.store.state_dir)}
    server, store = spans["meshdemo.v1.UserService/GetUser"], spans["store.get_user"]
    assert (server.service, server.instance) == ("meshdemo-user-service", "users-4")
    assert store.parent_span_id == server.span_id
