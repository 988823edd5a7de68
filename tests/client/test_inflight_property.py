"""Property: whatever the order of leases and releases, the pool's counts stay consistent."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client import Endpoint, PoolConfig
from client.testing import FakeClock
from tests.client.helpers import address

# True opens a lease, False closes the oldest open one; the clock moves by the float.
steps = st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=40)


async def run(script: list[tuple[bool, float]]) -> None:
    clock = FakeClock()
    pool = PoolConfig(
        max_concurrent_per_channel=2, max_channels=3, idle_timeout=2.0, health_check=False
    )
    # Nothing listens there and nothing is sent: channels connect only when used.
    endpoint = Endpoint(address("127.0.0.2:9"), pool=pool, clock=clock)
    open_leases: list[Any] = []
    for opens, elapsed in script:
        clock.advance(elapsed)
        if opens:
            lease = endpoint.lease()
            await lease.__aenter__()
            open_leases.append(lease)
        elif open_leases:
            await open_leases.pop(0).__aexit__(None, None, None)
        assert endpoint.in_flight == len(open_leases) >= 0
        assert endpoint.channel_count <= pool.max_channels
        assert endpoint.channel_count >= (1 if endpoint.total_calls else 0)
        per_channel = endpoint._channels.channel_loads()
        assert all(n >= 0 for n in per_channel)
        assert sum(per_channel) == endpoint.in_flight
    for lease in open_leases:
        await lease.__aexit__(None, None, None)
    assert endpoint.in_flight == 0
    await endpoint.close()
    assert endpoint.channel_count == 0


@settings(max_examples=40, deadline=None)
@given(steps)
def test_in_flight_counts_stay_consistent(script: list[tuple[bool, float]]) -> None:
    asyncio.run(run(script))
