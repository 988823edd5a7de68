"""Benchmark 3: seconds from process start to SERVING.

Each start spawns ``python -m service --port 0`` as in production (auth on,
metrics on, JSON logs, a fresh SQLite file, no OTLP endpoint), learns the
bound port from its ``serving`` log line and polls ``grpc.health.v1`` Check
until the user service reports SERVING. The clock starts just before the
spawn. Goal: median <= 1.5 s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.service._common import Bounds, Row, median
from bench.service._procs import Spawned, replica_argv, replica_env
from service.health import SERVICE_NAME

__all__ = ["GOAL_S", "startup", "time_to_serving"]

#: Maximum median seconds from spawn to SERVING.
GOAL_S = 1.5
_POLL_S = 0.01
_TIMEOUT_S = 30.0


async def _poll_serving(address: str, deadline: float) -> None:
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() < deadline:
            try:
                reply = await stub.Check(request, timeout=1.0)
            except grpc.aio.AioRpcError:
                reply = None
            if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(_POLL_S)
    raise TimeoutError(f"{address} not SERVING within {_TIMEOUT_S} s")


async def time_to_serving(store_url: str) -> float:
    """Spawn one replica, return seconds until it reports SERVING, stop it."""
    replica = Spawned(replica_argv("127.0.0.1", store_url), replica_env())
    replica.spawn()
    try:
        address = await replica.wait_ready()
        await _poll_serving(address, replica.started_at + _TIMEOUT_S)
        return time.perf_counter() - replica.started_at
    finally:
        await replica.stop()


async def startup(bounds: Bounds) -> list[Row]:
    """Time ``bounds.starts`` starts, each on a fresh store file; the median row."""
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
        for index in range(bounds.starts):
            seconds.append(await time_to_serving(f"sqlite:///{Path(tmp) / f'{index}.db'}"))
    value = median(seconds)
    return [
        Row(
            "startup",
            "process start to SERVING",
            value,
            "s",
            f"<= {GOAL_S}",
            value <= GOAL_S,
            {"seconds": seconds},
        )
    ]
