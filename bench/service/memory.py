"""Benchmark 4: resident memory of a replica, idle and holding 1,000 Chat streams.

The replica is production-like (auth, metrics, tracing without export, JSON
logs drained, SQLite). Idle: ``VmRSS`` after it served one GetUser and one
Chat and then idled ``settle`` seconds. Streams: this process opens
``streams`` Chat calls over one channel, sends one message on each and
waits for its echo (so every stream really exists on the server), waits
``settle`` seconds and reads ``VmRSS`` again, then half-closes them all.
The admission caps (``MESH_MAX_CONCURRENT_RPCS``, ``MESH_MAX_CHAT_STREAMS``,
``MESH_MAX_STREAMS_PER_PRINCIPAL``) and ``MESH_MAX_STREAMS_PER_CONNECTION`` are
raised above the stream count: one caller holds them all, on one connection. Goals: idle <= 80 MB,
with the streams <= 150 MB (MB = MiB here, as /proc reports kB).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from bench.service._common import Bounds, Row, seed_user
from bench.service._load import Load, get_user_load
from bench.service._procs import Spawned, replica_argv, replica_env, rss_mb
from meshdemo.v1 import user_pb2, user_pb2_grpc

if TYPE_CHECKING:
    from meshdemo.v1.user_pb2_grpc import UserServiceAsyncStub
from service.testing import reader_token

__all__ = ["IDLE_GOAL_MB", "STREAMS_GOAL_MB", "memory"]

#: Maximum resident MiB of an idle replica.
IDLE_GOAL_MB = 80.0
#: Maximum resident MiB while the streams are open.
STREAMS_GOAL_MB = 150.0
_OPEN_TIMEOUT_S = 60.0


def _message(index: int) -> user_pb2.ChatRequest:
    return user_pb2.ChatRequest(message=user_pb2.ChatMessage(user_id="bench", text=f"hi {index}"))


async def _open(stub: UserServiceAsyncStub, metadata: Any, index: int) -> Any:
    stream = stub.Chat(None, metadata=metadata)  # None: requests go through write()
    await stream.write(_message(index))
    reply = await stream.read()
    if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
        raise RuntimeError(f"chat stream {index} ended before its echo")
    return stream


async def _close(streams: Sequence[Any]) -> None:
    async def close(stream: Any) -> None:
        await stream.done_writing()
        await stream.read()  # EOF once the server ends the stream

    await asyncio.gather(*(close(stream) for stream in streams), return_exceptions=True)


async def _with_streams(address: str, count: int, settle: float, pid: int) -> float:
    metadata = (("authorization", f"Bearer {reader_token('bench-chat')}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        opening = asyncio.gather(*(_open(stub, metadata, i) for i in range(count)))
        streams = await asyncio.wait_for(opening, _OPEN_TIMEOUT_S)
        try:
            await asyncio.sleep(settle)
            return rss_mb(pid)
        finally:
            await asyncio.wait_for(_close(streams), _OPEN_TIMEOUT_S)


async def memory(bounds: Bounds) -> list[Row]:
    """Idle and with-streams VmRSS rows."""
    room = str(bounds.streams + 100)
    # One caller holds every stream: the admission caps (total, Chat, per caller) make room.
    env = replica_env(
        {
            "MESH_MAX_CONCURRENT_RPCS": room,
            "MESH_MAX_CHAT_STREAMS": room,
            "MESH_MAX_STREAMS_PER_PRINCIPAL": room,
            "MESH_MAX_STREAMS_PER_CONNECTION": room,  # they share one channel
        }
    )
    with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
        replica = Spawned(replica_argv("127.0.0.1", f"sqlite:///{Path(tmp) / 'users.db'}"), env)
        async with replica:
            user_id = await seed_user(replica.address)
            warm = Load(concurrency=1, duration=0.2, warmup=0.0, max_calls=10)
            await get_user_load(replica.address, user_id, reader_token(), warm)
            await _with_streams(replica.address, 1, 0.0, replica.pid)
            await asyncio.sleep(bounds.settle)
            idle = rss_mb(replica.pid)
            busy = await _with_streams(replica.address, bounds.streams, bounds.settle, replica.pid)
    per_stream_kb = (busy - idle) * 1024 / max(bounds.streams, 1)
    return [
        Row("memory", "VmRSS idle", idle, "MiB", f"<= {IDLE_GOAL_MB:g}", idle <= IDLE_GOAL_MB),
        Row(
            "memory",
            f"VmRSS with {bounds.streams} Chat streams open",
            busy,
            "MiB",
            f"<= {STREAMS_GOAL_MB:g}",
            busy <= STREAMS_GOAL_MB,
            {"per_stream_kib": per_stream_kb},
        ),
    ]
