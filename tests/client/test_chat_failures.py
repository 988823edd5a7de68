"""What a Chat does not survive, and the edges of its reconnection: real in-process servers.

Non-retryable statuses surface unchanged; a server that ends the chat with
messages unanswered, a spent reconnect budget or retry budget surface as
UNAVAILABLE with a clear message; an endpoint the client itself drained
hands its chat to another; a broken ``on_reconnect`` hook breaks nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from client import (
    ChatMoved,
    ChatReconnect,
    ChatReconnected,
    DeadlineExceededError,
    InvalidArgumentError,
    PoolConfig,
    RetryBudget,
    UnauthenticatedError,
    UnavailableError,
    UserClient,
)
from client.testing import ManualResolver, eventually
from meshdemo.v1 import user_pb2
from service.testing import InProcessServer, reader_token
from tests.client.conftest import serve_many, static_target
from tests.client.helpers import EchoUsers, echo_server

pytestmark = pytest.mark.timeout(30)


def chat_client(target: str, **options: Any) -> UserClient:
    return UserClient(target, token=reader_token(), tracing=False, **options)


async def test_a_non_retryable_status_surfaces_without_a_reconnect(
    client: UserClient,
) -> None:
    async with client.chat() as session:
        await session.send("x" * 5000)  # longer than the contract allows
        with pytest.raises(InvalidArgumentError):
            await anext(session)
        assert session.reconnects == 0
        with pytest.raises(InvalidArgumentError):  # the session stays failed
            await session.send("again")
    assert client.stats().retries == 0


async def test_an_unauthenticated_chat_surfaces(replicas: list[InProcessServer]) -> None:
    target = static_target(replicas)
    async with UserClient(target, token="not-a-token", tracing=False) as client:
        async with client.chat() as session:
            await session.send("hello")
            with pytest.raises(UnauthenticatedError):
                await anext(session)
            assert session.reconnects == 0


async def test_the_server_idle_timeout_surfaces_as_deadline_exceeded(store_url: str) -> None:
    async with serve_many(["127.0.0.2", "127.0.0.3"], store_url, chat_idle_timeout=0.3) as servers:
        async with chat_client(static_target(servers)) as client:
            async with client.chat() as session:
                await session.send("then silence")
                assert (await anext(session)).message.text == "then silence"
                with pytest.raises(DeadlineExceededError):
                    async with asyncio.timeout(10):
                        await anext(session)
                assert session.reconnects == 0


async def test_a_stopped_replica_hands_the_chat_over_and_counts_a_retry(
    replicas: list[InProcessServer],
) -> None:
    events: list[ChatReconnected] = []

    def broken_hook(event: ChatReconnected) -> None:
        events.append(event)
        raise RuntimeError("a broken metrics hook")

    async with chat_client(static_target(replicas)) as client:
        async with client.chat(on_reconnect=broken_hook) as session:
            await session.send("one")
            await anext(session)
            assert session.endpoint is not None
            victim = next(s for s in replicas if s.address == str(session.endpoint.address))
            await victim.stop()
            await session.send("two")
            reply = await anext(session)
        assert reply.message.text == "two"
        assert reply.replica != victim.replica.config.replica_name
        assert len(events) == 1
        stats = client.stats()
        assert stats.retries == 1
        assert stats.failures == 1  # the broken stream


async def test_an_endpoint_the_client_drains_hands_its_chat_over(
    replicas: list[InProcessServer],
) -> None:
    resolver = ManualResolver()
    first, second = replicas[0].address, replicas[1].address
    resolver.publish(first)
    events: list[ChatReconnected] = []
    pool = PoolConfig(drain_grace=0.1)
    async with chat_client("static:///unused", resolver=resolver, pool=pool) as client:
        async with client.chat(on_reconnect=events.append) as session:
            await session.send("one")
            assert (await anext(session)).replica == replicas[0].replica.config.replica_name
            resolver.publish(second)  # first leaves the set: drained, channels closed
            await eventually(lambda: session.reconnects == 1)
            await session.send("two")
            reply = await anext(session)
    assert reply.replica == replicas[1].replica.config.replica_name
    assert [e.code for e in events] == ["CANCELLED"]


class _Mute(EchoUsers):
    """Reads one chat message, answers nothing and ends the stream with OK."""

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            return
        yield user_pb2.ChatResponse()  # never reached: makes this an async generator


async def test_a_server_ending_the_chat_unanswered_exhausts_the_budget() -> None:
    events: list[ChatReconnected] = []
    async with echo_server("127.0.0.2", _Mute("mute")) as address:
        pool = PoolConfig(health_check=False)
        async with chat_client(f"static:///{address}", pool=pool) as client:
            reconnect = ChatReconnect(max_reconnects=2)
            async with client.chat(reconnect=reconnect, on_reconnect=events.append) as session:
                await session.send("are you there")
                with pytest.raises(UnavailableError) as failed:
                    await anext(session)
    message = failed.value.message
    assert "gave up after 2 reconnect(s) in a row without an answer" in message
    assert "ended the chat with 1 message(s) unanswered" in message
    assert [e.resent for e in events] == [1, 1]


async def test_a_spent_retry_budget_ends_the_chat(replicas: list[InProcessServer]) -> None:
    empty = RetryBudget(ratio=0, min_per_second=0)
    async with chat_client(static_target(replicas), budget=empty) as client:
        async with client.chat() as session:
            await session.send("one")
            await anext(session)
            assert session.endpoint is not None
            victim = next(s for s in replicas if s.address == str(session.endpoint.address))
            await victim.stop()
            with pytest.raises(UnavailableError, match="the client's retry budget is spent"):
                await session.send("two")  # raises here if the failure was seen already
                await anext(session)


async def test_after_a_failure_a_manual_reconnect_resends_and_goes_on(
    replicas: list[InProcessServer],
) -> None:
    async with chat_client(static_target(replicas)) as client:
        async with client.chat(reconnect=ChatReconnect(enabled=False)) as session:
            await session.send("one")
            await anext(session)
            assert session.endpoint is not None
            victim = next(s for s in replicas if s.address == str(session.endpoint.address))
            await victim.stop()
            with pytest.raises(UnavailableError):
                await anext(session)
            await session.reconnect()
            assert session.endpoint is not None
            assert str(session.endpoint.address) != victim.address
            await session.send("two")
            assert (await anext(session)).message.text == "two"
            await session.done_writing()
            assert [r async for r in session] == []


async def test_send_after_half_close_is_refused(client: UserClient) -> None:
    async with client.chat() as session:
        await session.done_writing()
        with pytest.raises(RuntimeError, match="half-closed"):
            await session.send("late")
        assert [r async for r in session] == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_reconnects": 0}, "max_reconnects must be at least 1"),
        ({"answer_timeout": 0}, "answer_timeout must be positive"),
        ({"retryable_codes": frozenset({grpc.StatusCode.OK})}, "must not hold OK"),
    ],
)
def test_reconnect_settings_are_validated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChatReconnect(**changes)


def test_grpcio_local_write_failure_counts_as_unavailable() -> None:
    empty = grpc.aio.Metadata()
    local = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, empty, empty, "Internal error from Core", None
    )
    server = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, empty, empty, "a bug", None)
    assert ChatReconnect().is_retryable(local)
    assert not ChatReconnect().is_retryable(server)
    assert not ChatReconnect(retryable_codes=frozenset()).is_retryable(local)


async def test_a_quiet_chat_leaves_a_replica_that_stopped_serving(
    replicas: list[InProcessServer],
) -> None:
    moves: list[ChatMoved] = []
    async with chat_client(static_target(replicas)) as client:
        async with client.chat(on_move=moves.append) as session:
            await session.send("one")
            await anext(session)
            endpoint = session.endpoint
            assert endpoint is not None
            server = next(s for s in replicas if s.address == str(endpoint.address))
            await server.set_serving(False)  # the health watch tells the client
            await eventually(lambda: not endpoint.is_available())
            await session.send("two")  # nothing unanswered: moved before sending
            reply = await anext(session)
            new = session.endpoint
            assert new is not None and new is not endpoint
        assert reply.message.text == "two"
        assert reply.replica != server.replica.config.replica_name
        assert (session.moves, session.reconnects, session.resent) == (1, 0, 0)
        assert moves == [ChatMoved(str(endpoint.address), str(new.address), "NOT_SERVING")]
        assert client.stats().failures == 0


async def test_a_failing_move_hook_does_not_break_the_chat(
    replicas: list[InProcessServer],
) -> None:
    def broken(event: ChatMoved) -> None:
        raise RuntimeError("a bug in the hook")

    async with chat_client(static_target(replicas)) as client:
        async with client.chat(on_move=broken) as session:
            await session.send("one")
            await anext(session)
            endpoint = session.endpoint
            assert endpoint is not None
            server = next(s for s in replicas if s.address == str(endpoint.address))
            await server.set_serving(False)
            await eventually(lambda: not endpoint.is_available())
            await session.send("two")
            reply = await anext(session)
        assert reply.message.text == "two"
        assert session.moves == 1


def test_the_keepalive_timeout_is_also_grpcio_s_ping_timeout() -> None:
    # grpcio 1.85 waits grpc.http2.ping_timeout_ms (60 s unless set) for a ping's ack:
    # without it a frozen replica under an idle chat took 70 s to notice, not 15 s.
    options = dict(PoolConfig(keepalive_timeout=2.0).channel_options())
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"] == 2000
