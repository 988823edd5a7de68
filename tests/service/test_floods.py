"""Floods from one client: messages, idle streams, idle connections; nobody else notices.

Each flood gets its own clear outcome: a stream of chat messages is paced by
HTTP/2 flow control and echoed in full; streams beyond a caller's cap are
refused with RESOURCE_EXHAUSTED and retry pushback, and the idle Chats it
holds end with DEADLINE_EXCEEDED at the idle timeout; sockets that never send
the HTTP/2 preface, or send it and then nothing, are closed after their
bound, and sockets beyond the connection cap at once. Meanwhile a health
Check and another caller's GetUser keep answering: their median latency
during the flood is compared with a baseline measured in the same test, as a
generous ratio (never a wall-clock threshold).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.reliability._floods import Probe, closed_within
from client._retry import pushback_delay
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.config import ConfigError, load_config
from service.interceptors import Admission, DefaultDeadlineInterceptor
from service.server import server_options
from service.testing import InProcessServer, admin_token, reader_token, serve

pytestmark = pytest.mark.timeout(90)

Md = tuple[tuple[str, str], ...]
ADMIN: Md = (("authorization", f"Bearer {admin_token()}"),)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _as(sub: str) -> Md:
    return (("authorization", f"Bearer {reader_token(sub)}"),)


def _chat(text: str) -> user_pb2.ChatRequest:
    return user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=text))


async def _user(stub: user_pb2_grpc.UserServiceAsyncStub) -> str:
    created = await stub.CreateUser(
        user_pb2.CreateUserRequest(name="Ann", email="ann@example.com", age=30), metadata=ADMIN
    )
    return str(created.user.id)


async def _counts_back_to_zero(admission: Admission) -> None:
    for _ in range(200):
        if admission.total == 0 and not +admission.by_kind and not admission.by_principal:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"admission counts leaked: {admission!r}")


def _admission(server: InProcessServer) -> Admission:
    assert server.replica.admission is not None
    return server.replica.admission


@pytest.fixture
async def flooded() -> AsyncIterator[InProcessServer]:
    async with serve(
        "127.0.0.1",
        max_streams_per_principal=10,
        chat_idle_timeout=2.0,
        handshake_timeout=1.0,
        max_connection_idle=1.0,
        max_connections=50,
    ) as server:
        yield server


@pytest.fixture
async def probe(flooded: InProcessServer) -> AsyncIterator[tuple[Probe, tuple[float, float]]]:
    # Its own connection: the flood's connections and streams are the flooder's.
    async with grpc.aio.insecure_channel(flooded.address) as ch:
        victim = Probe(ch, await _user(user_pb2_grpc.UserServiceStub(ch)))
        yield victim, await victim.median()


# -- a flood of messages on one stream ------------------------------------------------------


async def test_a_flood_of_chat_messages_is_paced_and_echoed_in_full(
    flooded: InProcessServer, probe: tuple[Probe, tuple[float, float]]
) -> None:
    victim, baseline = probe
    count = 3000
    async with grpc.aio.insecure_channel(flooded.address) as ch:
        call = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=_as("flooder"))

        async def write_all() -> None:
            for n in range(count):
                await call.write(_chat(f"flood {n} " + "x" * 200))
            await call.done_writing()

        async def read_all() -> list[str]:
            return [reply.message.text.split()[1] async for reply in call]

        writer = asyncio.create_task(write_all())
        reader = asyncio.create_task(read_all())
        await victim.assert_unharmed(baseline)
        echoed = await asyncio.wait_for(reader, 60)
        await writer
        assert echoed == [str(n) for n in range(count)]  # every message, once, in order
        assert await call.code() == grpc.StatusCode.OK
    await _counts_back_to_zero(_admission(flooded))


# -- a flood of idle streams from one caller ------------------------------------------------


async def test_a_flood_of_idle_streams_is_refused_beyond_the_cap_and_idle_chats_end(
    flooded: InProcessServer, probe: tuple[Probe, tuple[float, float]]
) -> None:
    victim, baseline = probe
    async with grpc.aio.insecure_channel(flooded.address) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        held = []
        for _ in range(10):  # the caller's cap: admitted, then silent
            call = stub.Chat(None, metadata=_as("flooder"))
            await call.write(_chat("hold"))
            await asyncio.wait_for(call.read(), 5)
            held.append(call)
        chats = [stub.Chat(None, metadata=_as("flooder")) for _ in range(40)]
        lists = [stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_as("flooder"))
                 for _ in range(40)]  # fmt: skip
        extras: list[grpc.aio.StreamStreamCall[Any, Any] | grpc.aio.UnaryStreamCall[Any, Any]]
        extras = [*chats, *lists]
        for extra in extras:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(extra.read(), 5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "close one first" in (refused.value.details() or "")
            assert pushback_delay(refused.value) == 1.0
        await victim.assert_unharmed(baseline)
        assert _admission(flooded).by_principal["flooder"] == 10
        for call in held:  # nothing sent for the idle timeout: the server ends them
            assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "idle timeout" in (await call.details() or "")
    await _counts_back_to_zero(_admission(flooded))
    await victim.assert_unharmed(baseline)


# -- a flood of idle connections -------------------------------------------------------------


def _address(server: InProcessServer) -> tuple[str, int]:
    host, _, port = server.address.rpartition(":")
    return host, int(port)


def _open_sockets(address: tuple[str, int], count: int, payload: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=5)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def _settings(flags: int = 0) -> bytes:
    """An empty HTTP/2 SETTINGS frame (RFC 9113 6.5)."""
    return b"\x00\x00\x00" + struct.pack(">BBI", 0x4, flags, 0)


@pytest.mark.parametrize(
    ("payload", "bound"),
    [(b"", 1.0), (PREFACE + _settings() + _settings(flags=0x1), 1.0)],
    ids=["never sends the preface", "sends the preface, then nothing"],
)
async def test_idle_connections_are_closed_after_their_bound(
    flooded: InProcessServer,
    probe: tuple[Probe, tuple[float, float]],
    payload: bytes,
    bound: float,
) -> None:
    victim, baseline = probe
    address = _address(flooded)
    socks = await asyncio.to_thread(_open_sockets, address, 40, payload)
    try:
        await victim.assert_unharmed(baseline)
        # Closed after the handshake (resp. idle) bound of 1 s; 8 s allows for GOAWAY's grace.
        closed = await asyncio.gather(
            *(asyncio.to_thread(closed_within, sock, 8 * bound + 4) for sock in socks)
        )
        assert all(closed)
    finally:
        for sock in socks:
            sock.close()
    await victim.assert_unharmed(baseline)


async def test_connections_beyond_the_cap_are_closed_at_once_and_the_cap_frees_itself(
    flooded: InProcessServer, probe: tuple[Probe, tuple[float, float]]
) -> None:
    victim, baseline = probe
    address = _address(flooded)
    # The probe's own connection counts too: 49 more fill the cap of 50.
    socks = await asyncio.to_thread(_open_sockets, address, 49, b"")
    extra = await asyncio.to_thread(_open_sockets, address, 10, b"")
    try:
        refused = await asyncio.gather(
            *(asyncio.to_thread(closed_within, sock, 2.0) for sock in extra)
        )
        assert all(refused)  # closed at accept, before the 1 s handshake bound
        await victim.assert_unharmed(baseline)  # an open connection keeps working
        # The squatters are closed after the handshake bound; then new clients get in.
        await asyncio.gather(*(asyncio.to_thread(closed_within, s, 6.0) for s in socks))
        async with grpc.aio.insecure_channel(flooded.address) as ch:
            again = health_pb2_grpc.HealthStub(ch)
            reply = await again.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for sock in [*socks, *extra]:
            sock.close()


# -- calls that arrive without a deadline ----------------------------------------------------


async def test_a_unary_call_without_a_deadline_ends_at_the_servers_bound() -> None:
    async with serve("127.0.0.1", fault_delay=1.0, default_call_timeout=0.3) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            request = user_pb2.GetUserRequest(id="01NOPE")
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.GetUser(request, metadata=_as("slow"))
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "set a deadline" in (late.value.details() or "")
            # A deadline of the caller's own is honoured, even past the server's bound.
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetUser(request, metadata=_as("slow"), timeout=5)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            health = health_pb2_grpc.HealthStub(ch)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
        await _counts_back_to_zero(_admission(server))


async def test_a_list_stream_without_a_deadline_ends_at_the_stream_bound() -> None:
    async with serve("127.0.0.1", fault_delay=1.0, default_stream_timeout=0.3) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            call = stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_as("slow"))
            assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.DEADLINE_EXCEEDED
            timed = stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_as("slow"), timeout=5)
            assert [user async for user in timed] == []
            assert await timed.code() == grpc.StatusCode.OK
        await _counts_back_to_zero(_admission(server))


def test_the_default_deadlines_are_settings_with_checks() -> None:
    config = load_config([], {"MESH_DEFAULT_CALL_TIMEOUT": "7", "MESH_MAX_CONNECTIONS": "9"})
    assert (config.default_call_timeout, config.max_connections) == (7.0, 9)
    assert ("grpc.max_allowed_incoming_connections", 9) in server_options(config)
    unlimited = load_config(["--max-connections", "0"], {})
    assert not any(
        k == "grpc.max_allowed_incoming_connections" for k, _ in server_options(unlimited)
    )
    for env, value in [("MESH_DEFAULT_CALL_TIMEOUT", "0"), ("MESH_DEFAULT_STREAM_TIMEOUT", "-1"),
                       ("MESH_MAX_CONNECTIONS", "-1")]:  # fmt: skip
        with pytest.raises(ConfigError, match=env):
            load_config([], {env: value})
    with pytest.raises(ValueError, match="call_timeout"):
        DefaultDeadlineInterceptor(0, 1)
