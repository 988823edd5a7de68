"""``python -m bench.client._instructions_probe SIDE CALLS``: one side's calls, under callgrind.

Run by :mod:`bench.client.instructions` inside ``valgrind --tool=callgrind
--instr-atstart=no``: it warms up, turns callgrind's counting on (with
``callgrind_control``) for exactly ``CALLS`` GetUser calls at 1 in flight,
turns it off, and prints what it saw as one JSON line.

The channels are fakes, and that is the point: with no network, no replica and
no grpc core thread, the instructions counted are those of the Python path of
one call (ours or a bare stub call's) plus the event loop's turn that
completes it, and they are the same from run to run, whatever else the machine
is doing. A fake call completes on the loop's next turn, as a grpc.aio call
completes when its event comes back through the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Generator
from typing import Any, cast

import grpc

from client import PoolConfig, UserClient
from client._client import DEFAULT_HEDGING
from client.testing import ManualResolver
from meshdemo.v1 import user_pb2, user_pb2_grpc

__all__ = ["SIDES", "main"]

#: A bare generated stub over three fake channels in turn: the floor any client pays.
BARE = "bare"
#: Our client with hedging off (the retry loop).
OURS_NO_HEDGING = "ours_no_hedging"
#: Our client with hedging on (the defaults' path; see ``_hedging``).
OURS = "ours"
SIDES = (BARE, OURS_NO_HEDGING, OURS)
_ADDRESSES = ("127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1")
_REPLY = user_pb2.GetUserResponse(user=user_pb2.User(id="u-1", name="Probe"))
_WARMUP = 300


class _FakeCall:
    """A unary call that answers on the event loop's next turn."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(self._future.set_result, _REPLY)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.__await__()

    def cancel(self) -> bool:
        return self._future.cancel()


class _FakeMultiCallable:
    def __call__(self, request: object, **_: object) -> _FakeCall:
        return _FakeCall()


class FakeChannel:
    """Enough of ``grpc.aio.Channel`` for the generated stub and our pool: always READY."""

    def __init__(self, *_: object, **__: object) -> None:
        pass

    def unary_unary(self, *_: object, **__: object) -> _FakeMultiCallable:
        return _FakeMultiCallable()

    unary_stream = stream_unary = stream_stream = unary_unary

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def channel_ready(self) -> None:
        return None

    async def close(self, grace: float | None = None) -> None:
        return None


def _hedging() -> dict[str, Any]:
    # The default GetUser policy with its delay held at 1 s (min = max): every call takes
    # the hedged path with its adaptive bookkeeping, and none is ever hedged, however
    # slowly callgrind runs the client.
    policy = DEFAULT_HEDGING["GetUser"].with_(min_delay=1.0, max_delay=1.0)
    return {"GetUser": policy}


def _ctl(switch: str) -> None:
    subprocess.run(
        ["callgrind_control", "-i", switch, str(os.getpid())], check=True, capture_output=True
    )


async def _measure(side: str, calls: int) -> dict[str, Any]:
    request = user_pb2.GetUserRequest(id="u-1")
    client: UserClient | None = None
    call: Callable[[], Awaitable[object]]
    if side == BARE:
        fakes = [cast(grpc.aio.Channel, FakeChannel()) for _ in _ADDRESSES]
        stubs = itertools.cycle([user_pb2_grpc.UserServiceStub(fake) for fake in fakes])
        metadata = (("authorization", "Bearer probe"),)

        async def call() -> object:
            reply = await next(stubs).GetUser(request, timeout=2.0, metadata=metadata)
            return reply.user

    else:
        hedging = _hedging() if side == OURS else False
        client = UserClient(
            "static:///" + ",".join(_ADDRESSES),
            token="probe",
            resolver=ManualResolver(*_ADDRESSES),
            hedging=hedging,
            pool=PoolConfig(health_check=False),  # No server to watch: a fake has no health.
        )
        await client.__aenter__()
        ours = client

        async def call() -> object:
            return await ours.get_user("u-1", timeout=2.0)

    for _ in range(_WARMUP):
        await call()
    _ctl("on")
    for _ in range(calls):
        await call()
    _ctl("off")
    figures: dict[str, Any] = {"side": side, "calls": calls}
    if client is not None:
        stats = client.stats()
        figures["hedges"] = stats.hedges
        figures["failures"] = stats.failures
        await client.__aexit__(None, None, None)
    return figures


def main(argv: list[str]) -> int:
    """Measure ``argv[0]`` (a side of :data:`SIDES`) for ``argv[1]`` calls; print JSON."""
    side, calls = argv[0], int(argv[1])
    if side not in SIDES:
        print(f"unknown side {side!r}; use one of {SIDES}", file=sys.stderr)
        return 2
    grpc.aio.insecure_channel = FakeChannel  # type: ignore[assignment]  # In this process only.
    print(json.dumps(asyncio.run(_measure(side, calls))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
