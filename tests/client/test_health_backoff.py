"""The health watch's reconnect backoff: shared, reset by a reply, capped, never overflowing.

A real grpc.aio server answers ``grpc.health.v1.Health/Watch`` from a script
(so many SERVING replies, then the stream breaks); the endpoint's ``sleep``
is a fake that records each wait and returns at once, and its random source
always draws 1.0, so every wait is exactly the backoff's base.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Endpoint, EndpointState, PoolConfig
from client._discovery_backoff import DiscoveryBackoff
from client.testing import eventually
from tests.client.helpers import address

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class ScriptedHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Watch call n sends ``script[n]`` SERVING replies, then breaks with UNAVAILABLE.

    Past the script's end a Watch replies SERVING once and stays open.
    """

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.calls = 0

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        self.calls += 1
        if not self.script:
            yield SERVING
            await asyncio.Event().wait()  # until the client cancels
        for _ in range(self.script.pop(0)):
            yield SERVING
        await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted break")


class TopOfRange(random.Random):
    """Always draws 1.0: jitter never shortens a wait."""

    def random(self) -> float:
        return 1.0


class RecordingSleep:
    """Records every requested wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def health_server(health: ScriptedHealth) -> AsyncIterator[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.2:0")
    await server.start()
    try:
        yield f"127.0.0.2:{port}"
    finally:
        await server.stop(0)


async def watch(script: list[int], initial: float = 0.1, cap: float = 0.8) -> list[float]:
    """Run the endpoint's watch through ``script``; the waits it made, in order."""
    health = ScriptedHealth(script)
    sleep = RecordingSleep()
    async with health_server(health) as hostport:
        endpoint = Endpoint(
            address(hostport),
            pool=PoolConfig(health_backoff_initial=initial, health_backoff_max=cap),
            sleep=sleep,
            rng=TopOfRange(),
        )
        endpoint.start()
        try:
            await eventually(lambda: health.calls == len(script) + 1, within=30)
            await eventually(lambda: endpoint.state is EndpointState.SERVING)
        finally:
            await endpoint.close()
    return sleep.waits


async def test_waits_double_while_nothing_answers() -> None:
    assert await watch([0, 0, 0]) == pytest.approx([0.1, 0.2, 0.4])


async def test_a_reply_resets_the_backoff() -> None:
    # Three silent breaks, then breaks that each came after a reply: the first
    # reconnect after a reply waits the initial delay again, every time; a
    # silent break after that doubles from there.
    waits = await watch([0, 0, 0, 1, 1, 2, 0])
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.1, 0.1, 0.1, 0.2])


async def test_waits_stop_at_the_cap() -> None:
    assert await watch([0] * 7) == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8])


async def test_the_watch_survives_a_thousand_breaks_without_overflow() -> None:
    # 2.0 ** 1100 overflows a float: the old hand-written backoff died here,
    # leaving the endpoint CONNECTING for good.
    waits = await watch([0] * 1100, initial=0.001, cap=0.004)
    assert len(waits) == 1100
    assert max(waits) == pytest.approx(0.004)
    assert waits[-1] == pytest.approx(0.004)


def test_the_watch_backoff_is_the_shared_discovery_backoff() -> None:
    backoff = PoolConfig(health_backoff_initial=0.2, health_backoff_max=2.0).watch_backoff()
    assert backoff == DiscoveryBackoff(initial=0.2, multiplier=2.0, cap=2.0, jitter=0.5)
    assert backoff.delay(10_000, lambda: 1.0) == 2.0
    assert backoff.delay(3, lambda: 0.0) == pytest.approx(0.4)  # half jitter: 0.8 halved
