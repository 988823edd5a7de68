"""HealthWatch on its own: a real grpc.aio health server plays a script, sleeps are a fake clock's.

Each Watch call plays the next entry of the script: the statuses to send,
then either a break (UNAVAILABLE) or an open stream that waits for the client;
past the script's end, SERVING and an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._discovery_backoff import DiscoveryBackoff
from client._health_watch import HEALTH_SERVICE_NAME, HealthWatch
from client._state import EndpointState
from client.testing import FakeClock, eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Stream:
    statuses: tuple[int, ...] = ()
    hold: bool = False  # stay open after the statuses instead of breaking
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


class Scripted(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    def __init__(self, *streams: Stream) -> None:
        self.streams = list(streams)
        self.services: list[str] = []

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        self.services.append(request.service)
        stream = self.streams.pop(0) if self.streams else Stream((SERVING,), hold=True)
        for status in stream.statuses:
            yield health_pb2.HealthCheckResponse(status=status)
        if stream.hold:
            await asyncio.Event().wait()
        await context.abort(stream.code, "scripted")


class Top(random.Random):
    def random(self) -> float:
        return 1.0


@contextlib.asynccontextmanager
async def watching(
    *streams: Stream, enabled: bool = True
) -> AsyncIterator[tuple[HealthWatch, Scripted, FakeClock]]:
    health = Scripted(*streams)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.2:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.2:{port}")
    clock = FakeClock()
    backoff = DiscoveryBackoff(initial=0.1, multiplier=2.0, cap=0.4, jitter=0.5)
    watch = HealthWatch(
        "users-1", lambda: channel, backoff, enabled=enabled, sleep=clock.sleep, rng=Top()
    )
    try:
        yield watch, health, clock
    finally:
        await watch.stop()
        await channel.close(None)
        await server.stop(0)


async def test_it_follows_serving_and_not_serving() -> None:
    async with watching(Stream((SERVING, NOT_SERVING), hold=True)) as (watch, health, _):
        assert watch.state is EndpointState.CONNECTING and watch.available
        watch.start()
        await eventually(lambda: watch.state is EndpointState.NOT_SERVING)
        assert not watch.available
        assert health.services == [HEALTH_SERVICE_NAME]


async def test_a_silent_break_is_unreachable_and_a_break_after_answers_is_connecting() -> None:
    async with watching(Stream(), Stream((SERVING,))) as (watch, _, clock):
        watch.start()
        await eventually(lambda: clock.pending == 1)
        assert watch.state is EndpointState.UNREACHABLE and not watch.available
        await clock.tick(0.1)
        await eventually(lambda: clock.pending == 1 and len(clock.sleeps) == 2)
        # Read again after the await (mypy would keep the narrowing from above).
        state: EndpointState = watch.state
        assert state is EndpointState.CONNECTING and not watch.available
        assert clock.sleeps == pytest.approx([0.1, 0.1])  # the answer reset the backoff
        await clock.tick(0.1)
        await eventually(lambda: watch.state is EndpointState.SERVING)
        assert watch.available


async def test_silent_breaks_back_off_to_the_cap() -> None:
    async with watching(*[Stream()] * 4) as (watch, _, clock):
        watch.start()
        for _ in range(4):
            await eventually(lambda: clock.pending == 1)
            await clock.tick(clock.next_deadline - clock.now)  # type: ignore[operator]
        await eventually(lambda: watch.state is EndpointState.SERVING)
        assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.4])


async def test_a_replica_without_health_service_counts_as_serving_and_the_watch_ends() -> None:
    async with watching(Stream(code=grpc.StatusCode.UNIMPLEMENTED)) as (watch, _, clock):
        watch.start()
        await eventually(lambda: watch.state is EndpointState.SERVING)
        assert clock.sleeps == []


async def test_unwatched_is_ready_and_a_stopped_watch_never_starts_again() -> None:
    async with watching(enabled=False) as (watch, health, _):
        watch.start()
        assert watch.state is EndpointState.READY
        await watch.stop()
        watch.start()
        await asyncio.sleep(0.05)
        assert health.services == []
    async with watching() as (watch, health, _):
        await watch.stop()
        watch.start()
        await asyncio.sleep(0.05)
        assert health.services == [] and "CONNECTING" in repr(watch)


async def test_a_restart_watches_anew_and_keeps_what_it_knew_meanwhile() -> None:
    async with watching(Stream((SERVING,), hold=True), Stream((NOT_SERVING,), hold=True)) as (
        watch,
        health,
        _,
    ):
        await watch.restart()  # not started yet: nothing to move
        assert health.services == []
        watch.start()
        await eventually(lambda: watch.state is EndpointState.SERVING)
        await watch.restart()
        assert watch.state is EndpointState.SERVING and watch.available  # no break shown
        await eventually(lambda: len(health.services) == 2)
        await eventually(lambda: not watch.available)  # the new stream's answer counts
        await watch.stop()
        await watch.restart()  # stopped for good: stays stopped
        assert len(health.services) == 2
