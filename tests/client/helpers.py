"""Test-only helpers: a small real UserService server, a manual clock, a counting resolver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from client import Address, StaticResolver
from meshdemo.v1 import user_pb2, user_pb2_grpc


class ManualClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class EchoUsers(user_pb2_grpc.UserServiceServicer):
    """GetUser answers ``id`` back after ``delay`` seconds; remembers every call's metadata."""

    name: str
    delay: float = 0.0
    calls: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        self.calls += 1
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if self.delay:
            await asyncio.sleep(self.delay)
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id, name=self.name))

    async def _unimplemented(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetUser only")

    async def CreateUser(self, request: Any, context: Any) -> Any:
        return await self._unimplemented(context)

    async def ListUsers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._unimplemented(context)
        yield None

    async def BatchCreateUsers(self, request_iterator: Any, context: Any) -> Any:
        return await self._unimplemented(context)

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await self._unimplemented(context)
        yield None


@contextlib.asynccontextmanager
async def echo_server(host: str, servicer: EchoUsers) -> AsyncIterator[str]:
    """A real grpc.aio server with only ``servicer`` (no health service) on ``host`` port 0."""
    server = grpc.aio.server()
    user_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        yield f"{host}:{port}"
    finally:
        await server.stop(0)


class CountingResolver(StaticResolver):
    """A static resolver that counts ``resolve_now()`` requests."""

    def __init__(self, addresses: frozenset[Address]) -> None:
        super().__init__(addresses)
        self.resolve_now_calls = 0

    def resolve_now(self) -> None:
        self.resolve_now_calls += 1


class ManualResolver:
    """A resolver whose address sets the test publishes by hand."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[frozenset[Address] | None] = asyncio.Queue()
        self.resolve_now_calls = 0

    def publish(self, *addresses: str) -> None:
        self._queue.put_nowait(frozenset(Address(*_split(a)) for a in addresses))

    async def updates(self) -> AsyncIterator[frozenset[Address]]:
        while (addresses := await self._queue.get()) is not None:
            yield addresses

    def resolve_now(self) -> None:
        self.resolve_now_calls += 1

    async def close(self) -> None:
        self._queue.put_nowait(None)


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def address(hostport: str) -> Address:
    """An Address from ``host:port``."""
    return Address(*_split(hostport))


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (polling, bounded) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
