"""Balancing: least_conn steers around a slow replica where round robin cannot."""

from __future__ import annotations

import asyncio

from client import PoolConfig, UserClient
from tests.client.helpers import EchoUsers, echo_server

CALLS = 150
CONCURRENCY = 15


async def run_load(client: UserClient) -> None:
    """CALLS GetUser calls, at most CONCURRENCY at once, bounded in time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await client.get_user(f"u-{i}")

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(CALLS))), 30)


async def slow_share(policy: str) -> float:
    slow, quick_a, quick_b = EchoUsers("slow", delay=0.1), EchoUsers("a"), EchoUsers("b")
    async with (
        echo_server("127.0.0.2", slow) as s,
        echo_server("127.0.0.3", quick_a) as a,
        echo_server("127.0.0.4", quick_b) as b,
        UserClient(
            f"static:///{s},{a},{b}",
            policy=policy,
            tracing=False,
            pool=PoolConfig(health_check=False),
            attempt_timeouts={"GetUser": 2.0},
        ) as client,
    ):
        await run_load(client)
        assert client.stats().failures == 0
    assert slow.calls + quick_a.calls + quick_b.calls == CALLS
    return slow.calls / CALLS


async def test_least_conn_sends_a_slow_replica_less_than_round_robin() -> None:
    round_robin = await slow_share("round_robin")
    least_conn = await slow_share("least_conn")
    assert 0.30 <= round_robin <= 0.37  # Its fair third, however slow it is.
    assert least_conn < round_robin / 2


async def test_peak_ewma_sends_a_slow_replica_less_than_least_conn() -> None:
    least_conn = await slow_share("least_conn")
    peak_ewma = await slow_share("peak_ewma")
    # Latency times load: the slow replica costs ten times more per call, so
    # after its first answers it gets only probes as its estimate decays.
    assert peak_ewma < least_conn
    assert peak_ewma <= 0.06
