"""One way to drive each of the four RPC kinds with a servicer command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from meshdemo.v1 import user_pb2

if TYPE_CHECKING:
    from meshdemo.v1.user_pb2_grpc import UserServiceAsyncStub

UNARY = "unary"
SERVER_STREAM = "server_stream"
CLIENT_STREAM = "client_stream"
BIDI_STREAM = "bidi_stream"
KINDS = (UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI_STREAM)

#: The test method of each kind: (grpc_service label, grpc_method label).
SERVICE = "meshdemo.v1.UserService"
METHOD_OF = {
    UNARY: "GetUser",
    SERVER_STREAM: "ListUsers",
    CLIENT_STREAM: "BatchCreateUsers",
    BIDI_STREAM: "Chat",
}


def full_name(kind: str) -> str:
    """``/meshdemo.v1.UserService/<Method>`` of ``kind``."""
    return f"/{SERVICE}/{METHOD_OF[kind]}"


@dataclass
class Outcome:
    """What the client saw: responses before the end, and the error if any."""

    responses: int
    error: grpc.aio.AioRpcError | None

    @property
    def code(self) -> grpc.StatusCode:
        """The final status code."""
        return grpc.StatusCode.OK if self.error is None else self.error.code()


async def _requests_batch(
    names: list[str], hold: asyncio.Event | None
) -> AsyncIterator[user_pb2.BatchCreateUsersRequest]:
    if hold is not None:
        await hold.wait()
    for name in names:
        yield user_pb2.BatchCreateUsersRequest(user=user_pb2.CreateUserRequest(name=name))


async def _requests_chat(
    texts: list[str], hold: asyncio.Event | None
) -> AsyncIterator[user_pb2.ChatRequest]:
    if hold is not None:
        await hold.wait()
    for text in texts:
        yield user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=text))


async def call(
    stub: UserServiceAsyncStub,
    kind: str,
    command: str = "",
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    items: int = 2,
    deadline: float = 10.0,
    refused: bool = False,
) -> Outcome:
    """Call the ``kind`` method: ``items`` good messages, then ``command``.

    For unary calls the command is the request; for streams it runs after
    ``items`` messages (server stream: after ``items`` responses).

    ``refused=True`` is for calls the server ends before reading anything
    (auth): request streams then send nothing until the call is over. A
    grpc.aio client whose write fails because the server already closed the
    call reports INTERNAL from that write instead of the server's status.
    """
    hold = asyncio.Event() if refused else None
    try:
        return await _call(stub, kind, command, metadata, items, deadline, hold)
    finally:
        if hold is not None:
            hold.set()


async def _call(
    stub: UserServiceAsyncStub,
    kind: str,
    command: str,
    metadata: tuple[tuple[str, str], ...],
    items: int,
    deadline: float,
    hold: asyncio.Event | None,
) -> Outcome:
    seen = 0
    try:
        if kind == UNARY:
            await stub.GetUser(
                user_pb2.GetUserRequest(id=command), metadata=metadata, timeout=deadline
            )
            seen = 1
        elif kind == SERVER_STREAM:
            request = user_pb2.ListUsersRequest(page_size=items, page_token=command)
            async for _ in stub.ListUsers(request, metadata=metadata, timeout=deadline):
                seen += 1
        elif kind == CLIENT_STREAM:
            names = [f"u{n}" for n in range(items)] + ([command] if command else [])
            await stub.BatchCreateUsers(
                _requests_batch(names, hold), metadata=metadata, timeout=deadline
            )
            seen = 1
        else:
            texts = [f"t{n}" for n in range(items)] + ([command] if command else [])
            async for _ in stub.Chat(
                _requests_chat(texts, hold), metadata=metadata, timeout=deadline
            ):
                seen += 1
    except grpc.aio.AioRpcError as err:
        return Outcome(seen, err)
    return Outcome(seen, None)
