"""ListUsers, BatchCreateUsers and Chat against a real replica."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import pytest

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.domain import MAX_BATCH
from service.testing import reader_token
from tests.aio_stubs import EOF, read
from tests.service.helpers import create_request, violations

Md = tuple[tuple[str, str], ...]


async def _seed(stub: user_pb2_grpc.UserServiceAsyncStub, md: Md, n: int) -> list[str]:
    async def items() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        for i in range(n):
            yield user_pb2.BatchCreateUsersRequest(user=create_request(i))

    reply = await stub.BatchCreateUsers(items(), metadata=md)
    return [u.id for u in reply.users]


async def _list(
    stub: user_pb2_grpc.UserServiceAsyncStub, md: Md, **fields: object
) -> list[user_pb2.ListUsersResponse]:
    request = user_pb2.ListUsersRequest(**fields)  # type: ignore[arg-type]
    return [r async for r in stub.ListUsers(request, metadata=md)]


async def test_list_streams_in_id_order_with_resume_tokens(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    ids = await _seed(stub, admin, 30)
    replies = await _list(stub, admin)
    assert [r.user.id for r in replies] == sorted(ids)
    resumed = await _list(stub, admin, page_token=replies[9].next_page_token)
    assert [r.user.id for r in resumed] == sorted(ids)[10:]


async def test_list_pages_cover_everything_once(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    ids = await _seed(stub, admin, 25)
    seen: list[str] = []
    token = ""
    while True:
        page = await _list(stub, admin, page_size=7, page_token=token)
        seen += [r.user.id for r in page]
        if len(page) < 7:
            break
        token = page[-1].next_page_token
    assert seen == sorted(ids)


async def test_list_default_and_capped_page_sizes(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await _seed(stub, admin, 120)
    assert len(await _list(stub, admin)) == 100
    assert len(await _list(stub, admin, page_size=5000)) == 120


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"page_size": -1}, "page_size"), ({"page_token": "not-a-token"}, "page_token")],
)
async def test_list_bad_paging_is_invalid_argument(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(stub, admin, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)


async def test_list_cancelled_midway_stops_and_server_stays_healthy(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await _seed(stub, admin, 300)
    call = stub.ListUsers(user_pb2.ListUsersRequest(page_size=1000), metadata=admin)
    got = 0
    async for _ in call:
        got += 1
        if got == 5:
            call.cancel()
            break
    assert call.cancelled()
    assert got == 5
    # The replica still answers promptly afterwards.
    assert len(await _list(stub, admin, page_size=3)) == 3


async def test_list_past_its_deadline_ends_with_deadline_exceeded(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await _seed(stub, admin, 200)
    call = stub.ListUsers(user_pb2.ListUsersRequest(page_size=1000), metadata=admin, timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            await asyncio.sleep(0.05)  # a slow reader
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_batch_reports_every_invalid_item_by_index_and_stores_none(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    async def items() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        yield user_pb2.BatchCreateUsersRequest(user=create_request(0))
        yield user_pb2.BatchCreateUsersRequest(user=create_request(1, email="nope"))
        yield user_pb2.BatchCreateUsersRequest(user=create_request(2, age=-1, name=""))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchCreateUsers(items(), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"users[1].email", "users[2].age", "users[2].name"}
    assert await _list(stub, admin) == []


async def test_batch_rolls_back_on_a_conflict(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await stub.CreateUser(create_request(99, email="taken@example.com"), metadata=admin)

    async def items() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        for i in range(5):
            yield user_pb2.BatchCreateUsersRequest(user=create_request(i))
        yield user_pb2.BatchCreateUsersRequest(user=create_request(5, email="TAKEN@example.com"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchCreateUsers(items(), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(await _list(stub, admin)) == 1


async def test_batch_replay_with_request_ids_returns_the_same_users(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    async def items() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        for i in range(3):
            yield user_pb2.BatchCreateUsersRequest(user=create_request(i, request_id=f"b-{i}"))

    first = await stub.BatchCreateUsers(items(), metadata=admin)
    again = await stub.BatchCreateUsers(items(), metadata=admin)
    assert list(first.users) == list(again.users)
    assert len(await _list(stub, admin)) == 3


async def test_batch_bounds(stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md) -> None:
    async def nothing() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        return
        yield

    async def too_many() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        for i in range(MAX_BATCH + 1):
            yield user_pb2.BatchCreateUsersRequest(user=create_request(i))

    for items in (nothing, too_many):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BatchCreateUsers(items(), metadata=admin)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _list(stub, admin) == []


async def test_chat_echoes_with_server_timestamp_until_half_close(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md
) -> None:
    call = stub.Chat(None, metadata=reader)
    replies = []
    for text in ("hello", "mesh"):
        await call.write(
            user_pb2.ChatRequest(message=user_pb2.ChatMessage(user_id="u1", text=text))
        )
        replies.append(await read(call))
    await call.done_writing()
    assert await call.read() == EOF
    assert await call.code() == grpc.StatusCode.OK
    assert [r.message.text for r in replies] == ["hello", "mesh"]
    assert all(r.message.timestamp.seconds > 0 and r.replica for r in replies)


@pytest.mark.parametrize("text", ["", "x" * 4097])
async def test_chat_bounds_message_length(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md, text: str
) -> None:
    call = stub.Chat(None, metadata=reader)
    await call.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=text)))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_chat_cancelled_by_client(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md
) -> None:
    call = stub.Chat(None, metadata=reader)
    await call.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="hi")))
    await call.read()
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    # Another chat works right away.
    again = stub.Chat(None, metadata=reader)
    await again.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="again")))
    assert (await read(again)).message.text == "again"
    await again.done_writing()


async def test_many_concurrent_chats_cost_no_thread_each(
    stub: user_pb2_grpc.UserServiceAsyncStub,
) -> None:
    before = threading.active_count()
    # Ten callers of 20 streams each: the default per-caller and Chat caps.
    callers = [(("authorization", f"Bearer {reader_token(f'reader-{n}')}"),) for n in range(10)]
    calls = [stub.Chat(None, metadata=callers[i % 10]) for i in range(200)]
    for i, call in enumerate(calls):
        await call.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=f"m{i}")))
    replies = await asyncio.gather(*(read(call) for call in calls))
    assert [r.message.text for r in replies] == [f"m{i}" for i in range(200)]
    assert threading.active_count() - before < 5
    for call in calls:
        await call.done_writing()
    await asyncio.gather(*(call.code() for call in calls))
