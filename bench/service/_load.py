"""Closed-loop GetUser load from this process over grpc.aio, bounded in count and time.

``concurrency`` workers share one channel; each sends its next call when the
previous one returns. Calls that complete during the warm-up are not
counted; the measured window then lasts ``duration`` seconds or until
``max_calls`` calls were sent, whichever comes first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from meshdemo.v1 import user_pb2, user_pb2_grpc

if TYPE_CHECKING:
    from meshdemo.v1.user_pb2_grpc import UserServiceAsyncStub

__all__ = ["Load", "LoadResult", "get_user_load"]

_CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Load:
    """The shape of one load run.

    Attributes:
        concurrency: Calls in flight at once.
        duration: Seconds of the measured window.
        warmup: Seconds of load before it.
        max_calls: Upper bound on calls sent in the whole run.
    """

    concurrency: int = 32
    duration: float = 5.0
    warmup: float = 1.0
    max_calls: int = 500_000


@dataclass(frozen=True)
class LoadResult:
    """What one run measured.

    Attributes:
        calls: Calls that succeeded in the measured window.
        errors: Calls that failed (whole run).
        seconds: Length of the measured window.
        sent: Every call sent (warm-up included): the server's span count.
    """

    calls: int
    errors: int
    seconds: float
    sent: int

    @property
    def rate(self) -> float:
        """Successful calls per second in the window."""
        return self.calls / self.seconds if self.seconds > 0 else 0.0


class _Counters:
    __slots__ = ("calls", "errors", "sent")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.sent = 0


async def _worker(
    stub: UserServiceAsyncStub,
    request: user_pb2.GetUserRequest,
    metadata: tuple[tuple[str, str], ...],
    counters: _Counters,
    stop_at: float,
    max_calls: int,
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at and counters.sent < max_calls:
        counters.sent += 1
        try:
            await stub.GetUser(request, metadata=metadata, timeout=_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            counters.errors += 1
        else:
            counters.calls += 1


async def get_user_load(address: str, user_id: str, token: str, load: Load) -> LoadResult:
    """Run ``load`` against GetUser(``user_id``) on ``address`` with ``token``.

    Raises:
        RuntimeError: when every call failed (a broken set-up, not a figure).
    """
    loop = asyncio.get_running_loop()
    metadata = (("authorization", f"Bearer {token}"),)
    request = user_pb2.GetUserRequest(id=user_id)
    counters = _Counters()
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        stub = user_pb2_grpc.UserServiceStub(channel)
        start = loop.time()
        stop_at = start + load.warmup + load.duration
        workers = [
            asyncio.create_task(_worker(stub, request, metadata, counters, stop_at, load.max_calls))
            for _ in range(load.concurrency)
        ]
        await asyncio.sleep(load.warmup)
        calls_before, window_start = counters.calls, loop.time()
        await asyncio.gather(*workers)
        window = loop.time() - window_start
    if counters.calls == 0:
        raise RuntimeError(f"every call to {address} failed ({counters.errors} errors)")
    return LoadResult(counters.calls - calls_before, counters.errors, window, counters.sent)
