"""Store calls as child spans of the RPC: a real replica, a real SQLite store, in-memory spans."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.store._traced import TracedStore, db_system
from service.testing import admin_token, serve
from tests.service.helpers import create_request

ADMIN = (("authorization", f"Bearer {admin_token()}"),)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _int_attribute(span: ReadableSpan, key: str) -> int:
    value = (span.attributes or {})[key]
    assert isinstance(value, int), f"{key} is {value!r}, not an int"
    return value


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and parent.context is not None
        and child.parent.span_id == parent.context.span_id
    )


async def test_get_user_has_a_store_span_under_the_server_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with (
        serve("127.0.0.1", tracer_provider=provider, replica_name="users-0") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = user_pb2_grpc.UserServiceStub(channel)
        created = await stub.CreateUser(create_request(1), metadata=ADMIN)
        exporter.clear()
        await stub.GetUser(user_pb2.GetUserRequest(id=created.user.id), metadata=ADMIN)
    spans = exporter.get_finished_spans()
    [rpc] = named(spans, "meshdemo.v1.UserService/GetUser")
    [store] = named(spans, "store.get_user")
    assert child_of(store, rpc)
    assert store.kind is SpanKind.CLIENT
    assert dict(store.attributes or {}) == {
        "db.system": "sqlite",
        "db.operation": "SELECT",
        "meshdemo.replica": "users-0",
        "meshdemo.found": True,
    }
    assert store.status.status_code is StatusCode.UNSET
    assert rpc.start_time is not None and store.start_time is not None
    assert rpc.end_time is not None and store.end_time is not None
    assert rpc.start_time <= store.start_time <= store.end_time <= rpc.end_time


async def test_writes_listing_and_batches_are_traced_and_pings_are_not(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with (
        serve("127.0.0.1", tracer_provider=provider, health_interval=0.1) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = user_pb2_grpc.UserServiceStub(channel)
        await stub.CreateUser(create_request(1), metadata=ADMIN)
        batch = [user_pb2.BatchCreateUsersRequest(user=create_request(n)) for n in (2, 3)]
        await stub.BatchCreateUsers(iter(batch), metadata=ADMIN)
        listed = [u async for u in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=ADMIN)]
        await asyncio.sleep(0.3)  # Several health probes (store pings) happen meanwhile.
    assert len(listed) == 3
    spans = exporter.get_finished_spans()
    [create_rpc] = named(spans, "meshdemo.v1.UserService/CreateUser")
    [create] = named(spans, "store.create_user")
    assert child_of(create, create_rpc)
    assert (create.attributes or {})["db.operation"] == "INSERT"
    [batch_rpc] = named(spans, "meshdemo.v1.UserService/BatchCreateUsers")
    [batch_span] = named(spans, "store.batch_create")
    assert child_of(batch_span, batch_rpc)
    assert (batch_span.attributes or {})["meshdemo.batch_size"] == 2
    [list_rpc] = named(spans, "meshdemo.v1.UserService/ListUsers")
    chunks = named(spans, "store.list_users")
    assert chunks
    assert all(child_of(chunk, list_rpc) for chunk in chunks)
    assert sum(_int_attribute(c, "meshdemo.rows") for c in chunks) == 3
    assert not [s for s in spans if "ping" in s.name or "health" in s.name.lower()]


async def test_a_caller_error_is_recorded_but_is_no_span_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with (
        serve("127.0.0.1", tracer_provider=provider) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = user_pb2_grpc.UserServiceStub(channel)
        await stub.CreateUser(create_request(1), metadata=ADMIN)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateUser(create_request(1, name="Again"), metadata=ADMIN)
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    _, duplicate = named(exporter.get_finished_spans(), "store.create_user")
    assert [e.name for e in duplicate.events] == ["exception"]
    assert duplicate.status.status_code is StatusCode.UNSET


async def test_an_unavailable_store_marks_the_span_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # A PostgreSQL store on a loopback port where nothing listens: the replica
    # starts NOT_SERVING, and every call finds the store unavailable. (A SQLite
    # path in a missing directory no longer starts at all.)
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    down = f"postgresql://meshdemo@127.0.0.1:{port}/meshdemo?pool_timeout=0.5"
    async with (
        serve("127.0.0.1", tracer_provider=provider, store_url=down) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = user_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(user_pb2.GetUserRequest(id="u-1"), metadata=ADMIN)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    [span] = named(exporter.get_finished_spans(), "store.get_user")
    assert span.status.status_code is StatusCode.ERROR
    assert "StoreUnavailable" in (span.status.description or "")


async def test_no_provider_or_a_provider_that_exports_nowhere_leaves_the_store_bare() -> None:
    async with serve("127.0.0.1") as bare:
        assert not isinstance(bare.replica.store, TracedStore)
    async with serve("127.0.0.1", tracer_provider=TracerProvider()) as silent:
        assert not isinstance(silent.replica.store, TracedStore)


async def test_a_traced_store_is_wrapped(provider: TracerProvider) -> None:
    async with serve("127.0.0.1", tracer_provider=provider) as traced:
        assert isinstance(traced.replica.store, TracedStore)


@pytest.mark.parametrize(
    ("url", "system"),
    [
        ("sqlite:///x.db", "sqlite"),
        ("postgresql://u@127.0.0.1/db", "postgresql"),
        ("postgres://u@127.0.0.1/db", "postgresql"),
    ],
)
def test_db_system(url: str, system: str) -> None:
    assert db_system(url) == system
