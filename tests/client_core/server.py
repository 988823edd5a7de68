"""A tiny real grpc.aio UserService on 127.0.0.1, port 0, whose GetUser fails on request.

``GetUser(id=...)`` picks a scripted behaviour by id (see :class:`ScriptedUserService`);
every other method is the generated base class's UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_status import rpc_status

from meshdemo.v1 import user_pb2, user_pb2_grpc

Behaviour = Callable[[grpc.aio.ServicerContext[object, object], int], Awaitable[None]]
"""Called with the context and how many times this id was asked; may abort."""


def rich_status(
    code: grpc.StatusCode, message: str, details: Sequence[Message | any_pb2.Any]
) -> status_pb2.Status:
    """A google.rpc.Status with ``details`` packed (an Any is taken as already packed)."""
    packed = []
    for detail in details:
        if isinstance(detail, any_pb2.Any):
            packed.append(detail)
            continue
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


async def abort_rich(
    context: grpc.aio.ServicerContext[object, object],
    status: status_pb2.Status,
    extra_trailing: Sequence[tuple[str, str | bytes]] = (),
) -> None:
    """Abort with ``status`` in grpc-status-details-bin, as grpc_status.rpc_status does."""
    wire = rpc_status.to_status(status)
    await context.abort(
        wire.code, wire.details, tuple(wire.trailing_metadata) + tuple(extra_trailing)
    )


class ScriptedUserService(user_pb2_grpc.UserServiceServicer):
    """GetUser runs the behaviour registered for the request id, then answers with the id."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.calls: Counter[str] = Counter()

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> user_pb2.GetUserResponse:
        self.calls[request.id] += 1
        behaviour = self.behaviours.get(request.id)
        if behaviour is not None:
            await behaviour(context, self.calls[request.id])
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id))


@dataclass
class Running:
    """A started server and a channel to it."""

    service: ScriptedUserService
    target: str
    channel: grpc.aio.Channel
    stub: user_pb2_grpc.UserServiceAsyncStub

    async def get_user(self, user_id: str, within: float | None = 5.0) -> user_pb2.GetUserResponse:
        return await self.stub.GetUser(user_pb2.GetUserRequest(id=user_id), timeout=within)


@asynccontextmanager
async def running(behaviours: dict[str, Behaviour]) -> AsyncIterator[Running]:
    """Serve ``behaviours`` on 127.0.0.1 (port 0) for the duration of the block."""
    server = grpc.aio.server()
    service = ScriptedUserService(behaviours)  # type: ignore[abstract]  # others: UNIMPLEMENTED
    user_pb2_grpc.add_UserServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    target = f"ipv4:127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Running(service, target, channel, user_pb2_grpc.UserServiceStub(channel))
    finally:
        await channel.close(None)
        await server.stop(None)


def sleep_first(seconds: float) -> Behaviour:
    """A behaviour: the first call hangs ``seconds`` (bounded), later ones answer at once."""

    async def behaviour(context: grpc.aio.ServicerContext[object, object], count: int) -> None:
        if count == 1:
            await asyncio.sleep(seconds)

    return behaviour
