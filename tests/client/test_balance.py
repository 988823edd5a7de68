"""Balancing: least_conn steers around a slow replica where round robin cannot."""

from __future__ import annotations

import asyncio
import random

from client import PoolConfig, UserClient
from client.testing import FakeReplica

CALLS = 150
CONCURRENCY = 15


async def run_load(client: UserClient, calls: int, concurrency: int) -> None:
    """``calls`` GetUser calls, at most ``concurrency`` at once, bounded in time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.get_user(f"u-{i}")

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(calls))), 30)


async def slow_share(policy: str, calls: int = CALLS, concurrency: int = CONCURRENCY) -> float:
    slow = FakeReplica("127.0.0.2", name="slow", delay=0.1)
    quick_a, quick_b = FakeReplica("127.0.0.3", name="a"), FakeReplica("127.0.0.4", name="b")
    async with (
        slow,
        quick_a,
        quick_b,
        UserClient(
            f"static:///{slow.address},{quick_a.address},{quick_b.address}",
            policy=policy,
            rng=random.Random(7),  # the picks are repeatable; the timings are not
            tracing=False,
            pool=PoolConfig(health_check=False),
            attempt_timeouts={"GetUser": 2.0},
            hedging=False,  # the picker alone: a hedge would add calls to the quick ones
        ) as client,
    ):
        await run_load(client, calls, concurrency)
        assert client.stats().failures == 0
    assert slow.calls + quick_a.calls + quick_b.calls == calls
    return slow.calls / calls


async def test_least_conn_sends_a_slow_replica_less_than_round_robin() -> None:
    round_robin = await slow_share("round_robin")
    least_conn = await slow_share("least_conn")
    assert 0.30 <= round_robin <= 0.37  # Its fair third, however slow it is.
    assert least_conn < round_robin / 2


async def test_at_light_load_only_peak_ewma_avoids_a_slow_replica() -> None:
    # One call at a time: nothing is ever in flight when a pick is made, so
    # least_conn's two choices always tie and it is as blind as random; the
    # latency estimate sees the slow answers (0.1 s against about 1 ms) and
    # keeps peak_ewma away after the first one (it decays over seconds).
    least_conn = await slow_share("least_conn", calls=60, concurrency=1)
    peak_ewma = await slow_share("peak_ewma", calls=60, concurrency=1)
    assert least_conn >= 0.15
    assert peak_ewma <= 3 / 60
