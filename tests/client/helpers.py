"""Test-only helpers: a scriptable UserService servicer base (EchoUsers) and address().

The clock, resolvers, replicas and eventually() come from ``client.testing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from client import Address
from meshdemo.v1 import user_pb2, user_pb2_grpc


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


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def address(hostport: str) -> Address:
    """An Address from ``host:port``."""
    return Address(*_split(hostport))
