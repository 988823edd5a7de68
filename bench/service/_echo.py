"""The bare baseline: a grpc.aio server whose GetUser returns one fixed user.

No interceptors, no store, no health, no logging: what a call costs grpc.aio
and protobuf alone. ``python -m bench.service._echo [--host H]`` binds port 0,
prints ``{"message": "serving", "address": ...}`` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from meshdemo.v1 import user_pb2, user_pb2_grpc

__all__ = ["EchoServicer", "main", "serve"]

_CREATED = Timestamp(seconds=1_700_000_000)


class EchoServicer(user_pb2_grpc.UserServiceServicer):
    """GetUser answers the same user (with the asked id) to everyone."""

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        user = user_pb2.User(
            id=request.id,
            name="Echo",
            email="echo@example.com",
            age=42,
            roles=[user_pb2.ROLE_USER],
            created_at=_CREATED,
        )
        return user_pb2.GetUserResponse(user=user)

    async def CreateUser(self, request: Any, context: Any) -> Any:
        await _unimplemented(context)

    async def ListUsers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await _unimplemented(context)
        yield  # an async generator, as a response stream handler must be

    async def BatchCreateUsers(self, request_iterator: Any, context: Any) -> Any:
        await _unimplemented(context)

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await _unimplemented(context)
        yield


async def _unimplemented(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the echo server serves GetUser only")


async def serve(host: str) -> None:
    """Serve on ``host`` port 0 until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    user_pb2_grpc.add_UserServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(json.dumps({"message": "serving", "address": f"{host}:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--host`` and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.service._echo")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
