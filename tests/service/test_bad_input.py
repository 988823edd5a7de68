"""Bounds on every request string, against a real replica (auth on, SQLite).

Oversized input gets INVALID_ARGUMENT with a field violation, never
RESOURCE_EXHAUSTED, and no error message (or detail) quotes it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.domain import (
    MAX_BATCH,
    MAX_CHAT_TEXT,
    MAX_EMAIL,
    MAX_ID,
    MAX_NAME,
    MAX_PAGE_TOKEN,
    MAX_REQUEST_ID,
    validate_user_id,
)
from service.errors import MAX_DETAILED_VIOLATIONS, MAX_QUOTED, InvalidArgument, quoted
from service.testing import ReplicaProcess, admin_token
from tests.service.helpers import create_request, violations

Md = tuple[tuple[str, str], ...]
#: A marker that must never come back in an error.
LONG = "Q" * 4096


def _echoes(err: grpc.aio.AioRpcError, text: str) -> bool:
    """Whether ``err``'s message or any of its details carry ``text``."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    carried = (err.details() or "").encode()
    if status is not None:
        carried += status.SerializeToString()
    return text.encode() in carried


async def test_a_4kib_id_is_invalid_argument_and_not_echoed(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(user_pb2.GetUserRequest(id=LONG), metadata=reader, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == {"id": f"must be at most {MAX_ID} characters"}
    assert not _echoes(caught.value, "Q" * 16)


async def test_an_id_at_the_bound_is_looked_up(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(user_pb2.GetUserRequest(id="Z" * MAX_ID), metadata=reader, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # At most MAX_QUOTED characters of client input are quoted.
    assert "Z" * MAX_QUOTED in (caught.value.details() or "")
    assert not _echoes(caught.value, "Z" * (MAX_QUOTED + 1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "n" * (MAX_NAME + 1)),
        ("email", "e" * (MAX_EMAIL - 11) + "@example.com"),
        ("request_id", "r" * (MAX_REQUEST_ID + 1)),
    ],
)
async def test_create_fields_are_bounded(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md, field: str, value: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(create_request(1, **{field: value}), metadata=admin, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)
    assert not _echoes(caught.value, value[:16])


async def test_a_flood_of_unknown_roles_is_not_echoed(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    request = create_request(1, roles=[77] * 10_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(request, metadata=admin, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == {"roles": "must hold at most 3 roles, each once"}


async def test_a_long_page_token_is_invalid_argument(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md
) -> None:
    request = user_pb2.ListUsersRequest(page_token="A" * (MAX_PAGE_TOKEN + 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.ListUsers(request, metadata=reader, timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(caught.value)
    assert not _echoes(caught.value, "A" * 16)


async def _chat(
    messages: Sequence[user_pb2.ChatMessage], done: asyncio.Event
) -> AsyncIterator[user_pb2.ChatRequest]:
    for message in messages:
        yield user_pb2.ChatRequest(message=message)
    # Stay open until the server ended the call: a grpc.aio client writing
    # (or half-closing) after that reports INTERNAL instead of its status.
    await done.wait()


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (user_pb2.ChatMessage(text="t" * (MAX_CHAT_TEXT + 1)), "messages[1].text"),
        (user_pb2.ChatMessage(text="hi", user_id="u" * (MAX_ID + 1)), "messages[1].user_id"),
    ],
)
async def test_chat_strings_are_bounded(
    stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md, message: user_pb2.ChatMessage, field: str
) -> None:
    replies = 0
    done = asyncio.Event()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Chat(
            _chat([user_pb2.ChatMessage(text="ok"), message], done), metadata=reader, timeout=10
        ):
            replies += 1
    done.set()
    assert replies == 1
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)
    assert not _echoes(caught.value, "t" * 16) and not _echoes(caught.value, "u" * 16)


async def test_a_batch_of_bad_users_fits_its_error(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    # Every field of every user wrong: thousands of violations, which in one
    # BadRequest would overflow grpc's trailer limit (RESOURCE_EXHAUSTED).
    async def users() -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
        for _ in range(MAX_BATCH):
            yield user_pb2.BatchCreateUsersRequest(
                user=user_pb2.CreateUserRequest(
                    name="", email="x", age=999, roles=[user_pb2.Role.ValueType(9)]
                )
            )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchCreateUsers(users(), metadata=admin, timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = violations(caught.value)
    assert len(listed) == MAX_DETAILED_VIOLATIONS + 1
    assert listed[""].startswith("and ")


async def test_a_bad_message_mid_batch_stores_nothing(
    channel: grpc.aio.Channel, stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    good = user_pb2.BatchCreateUsersRequest(user=create_request(1)).SerializeToString()
    done = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        yield good
        yield b"\x0a\x04\x0a\x02\xff\xfe"  # user.name: not UTF-8
        await done.wait()  # as in _chat

    # No serializers: the frames go out as the raw bytes they are.
    batch = channel.stream_unary("/meshdemo.v1.UserService/BatchCreateUsers", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch(frames(), metadata=admin, timeout=10)
    done.set()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = [u async for u in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=admin)]
    assert listed == []


async def test_garbage_gets_unauthenticated_before_invalid_argument(
    channel: grpc.aio.Channel, admin: Md
) -> None:
    get = channel.unary_unary("/meshdemo.v1.UserService/GetUser", None, None)  # raw bytes
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await get(b"\xff\xff", timeout=10)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as signed_in:
        await get(b"\xff\xff", metadata=admin, timeout=10)
    assert signed_in.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@given(st.text(max_size=300), st.integers(min_value=1, max_value=80))
def test_quoted_input_is_bounded(text: str, limit: int) -> None:
    shown = quoted(text, limit)
    if len(text) <= limit:
        assert shown == repr(text)
    else:
        assert shown.startswith(repr(text[:limit])) and f"({len(text)} characters)" in shown


def test_validate_user_id_bounds() -> None:
    assert validate_user_id("a" * MAX_ID) == "a" * MAX_ID
    with pytest.raises(InvalidArgument, match="id is required"):
        validate_user_id("")
    with pytest.raises(InvalidArgument) as caught:
        validate_user_id("b" * (MAX_ID + 1))
    assert "bbbb" not in caught.value.message


@pytest.mark.slow
async def test_a_real_process_answers_garbage_without_a_traceback(tmp_path: Path) -> None:
    calls = 20
    async with (
        ReplicaProcess("127.0.0.1", store_url=f"sqlite:///{tmp_path / 'users.db'}") as replica,
        grpc.aio.insecure_channel(replica.address) as channel,
    ):
        metadata = (("authorization", f"Bearer {admin_token()}"),)
        get = channel.unary_unary("/meshdemo.v1.UserService/GetUser", None, None)  # raw bytes
        for _ in range(calls):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await get(b"\x0a\x02\xff\xfe", metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Still answering real requests.
        stub = user_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetUser(user_pb2.GetUserRequest(id="01NOPE"), metadata=metadata, timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert await replica.terminate() == 0
    access = [line for line in replica.logs if line.get("message") == "rpc"]
    assert [line["code"] for line in access].count("INVALID_ARGUMENT") == calls
    assert not [line for line in replica.logs if "Traceback" in str(line)]
    assert not [line for line in replica.logs if line.get("level") == "ERROR"]
