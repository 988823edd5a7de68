"""Hedging against real replica processes: a paused replica (SIGSTOP) costs a hedge delay.

The attempt timeout is set far above the hedge delay, so a call that waited
for its stalled copy to time out would take seconds: only the hedge can bring
it back in well under that bound. (SIGKILL and SIGSTOP under load with the
default hedging fail no call: tests/client/test_chaos.py.)
"""

from __future__ import annotations

import asyncio
import time

import pytest

from client import HedgingPolicy, UserClient
from service.testing import ReplicaProcess, admin_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HEDGE_DELAY = 0.05
ATTEMPT_TIMEOUT = 8.0
#: Far below the attempt timeout, far above the hedge delay plus a loaded machine's latency.
BOUND = 3.0
CALLS = 60


async def test_a_paused_replica_holds_no_call_past_about_the_hedge_delay(
    processes: list[ReplicaProcess],
) -> None:
    victim = processes[0]
    target = "static:///" + ",".join(p.address for p in processes)
    async with UserClient(
        target,
        token=admin_token(),
        tracing=False,
        attempt_timeouts={"GetUser": ATTEMPT_TIMEOUT},
        deadlines={"GetUser": 2 * ATTEMPT_TIMEOUT},
        hedging={"GetUser": HedgingPolicy(delay=HEDGE_DELAY)},
    ) as client:
        user = await client.create_user("Paused", "paused@example.com", 30)
        await asyncio.gather(*(client.get_user(user.id) for _ in range(6)))  # channels up
        victim.pause()
        try:
            latencies = await _timed_calls(client, user.id)
        finally:
            victim.resume()
        stats = client.stats()
    assert max(latencies) < BOUND, sorted(latencies)[-5:]
    assert stats.failures == 0
    assert stats.hedges_won >= 1
    stalled = next(e for e in stats.endpoints if e.address == victim.address)
    assert stalled.in_flight == 0  # the losers' leases were given back


async def _timed_calls(client: UserClient, user_id: str) -> list[float]:
    gate = asyncio.Semaphore(4)

    async def one() -> float:
        async with gate:
            started = time.monotonic()
            await client.get_user(user_id)
            return time.monotonic() - started

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(CALLS))), 60)
