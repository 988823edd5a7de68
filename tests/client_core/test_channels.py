"""ChannelPool on its own, on a fake clock: leases, extra channels, idle closing, the drain.

The channels are real grpc.aio channels to a loopback port nobody serves;
nothing here makes a call, so none ever connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest

from client._channels import (
    ChannelPool,
    EndpointDrainingError,
    Lease,
    PoolConfig,
    await_closing,
)
from client._endpoint import Endpoint
from client._resolver import Address
from client.testing import FakeClock

ADDRESS = Address("127.0.0.2", 9)
OWNER = cast(Endpoint, object())


class Opened:
    """A channel factory that records what it opened (real insecure channels)."""

    def __init__(self) -> None:
        self.channels: list[grpc.aio.Channel] = []

    def __call__(
        self, target: str, options: list[tuple[str, Any]], interceptors: Sequence[Any]
    ) -> grpc.aio.Channel:
        assert target == "ipv4:127.0.0.2:9"
        channel = grpc.aio.insecure_channel(target, options=options)
        self.channels.append(channel)
        return channel


class CountingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__(50.0)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def give_back(pool: ChannelPool, lease: Lease) -> None:
    """Release ``lease`` and close what that leaves to close, as the client's callers do."""
    await await_closing(pool.release(lease))


def make_pool(**settings: Any) -> tuple[ChannelPool, Opened, CountingClock]:
    opened, clock = Opened(), CountingClock()
    pool = ChannelPool(ADDRESS, PoolConfig(**settings), OWNER, opened, clock=clock)
    return pool, opened, clock


async def test_a_release_that_leaves_nothing_to_close_costs_no_coroutine() -> None:
    pool, opened, _ = make_pool(max_channels=2, max_concurrent_per_channel=1, idle_timeout=1.0)
    first = pool.acquire()
    assert pool.release(first) is None  # The one channel stays (min_channels).
    first, second = pool.acquire(), pool.acquire()
    assert pool.release(second) is None  # Idle, but not for long yet.
    assert pool.release(first) is None
    await pool.close()
    assert opened.channels


async def test_a_lease_is_one_object_per_channel_naming_its_owner() -> None:
    pool, opened, _ = make_pool()
    assert pool.channel_count == 0  # opened lazily
    first = pool.acquire()
    second = pool.acquire()
    assert first is second and first.endpoint is OWNER
    assert first.channel is opened.channels[0] and pool.channel_loads() == [2]
    await give_back(pool, first)
    await give_back(pool, second)
    assert (pool.in_flight, pool.total_calls) == (0, 2)
    await pool.close()


async def test_extra_channels_open_only_when_every_channel_is_full_up_to_the_max() -> None:
    pool, opened, _ = make_pool(max_concurrent_per_channel=2, max_channels=2)
    leases = [pool.acquire() for _ in range(5)]
    assert len(opened.channels) == 2
    assert pool.channel_loads() == [3, 2]  # past the max, the least busy takes more
    for lease in leases:
        await give_back(pool, lease)
    assert pool.channel_loads() == [0, 0]
    await pool.close()


async def test_an_idle_extra_channel_closes_after_the_timeout_and_the_first_stays() -> None:
    pool, _, clock = make_pool(max_concurrent_per_channel=1, max_channels=3, idle_timeout=5.0)
    leases = [pool.acquire() for _ in range(3)]
    for lease in leases:
        await give_back(pool, lease)
    clock.advance(5.0)
    await pool.prune()
    assert pool.channel_count == 3  # not idle *longer* than the timeout yet
    clock.advance(0.1)
    lease = pool.acquire()  # taking a lease closes nothing
    assert pool.channel_count == 3
    closing = pool.release(lease)  # ...giving one back does: out of the pool at once,
    assert pool.channel_count == 1
    assert closing is not None  # closed by the coroutine handed back
    await closing
    await pool.close()


async def test_calls_on_a_busy_channel_do_not_read_the_clock() -> None:
    pool, _, clock = make_pool()
    holding = pool.acquire()
    reads = clock.reads
    for _ in range(100):
        await give_back(pool, pool.acquire())
    assert clock.reads == reads
    await give_back(pool, holding)
    assert clock.reads == reads + 1  # the channel became idle: stamped once
    await pool.close()


async def test_a_draining_pool_refuses_leases_and_closes_with_its_last_call() -> None:
    pool, opened, _ = make_pool()
    lease = pool.acquire()
    pool.start_draining()
    with pytest.raises(EndpointDrainingError, match=r"127\.0\.0\.2:9 is draining"):
        pool.acquire()
    assert pool.channel_count == 1
    await give_back(pool, lease)
    assert pool.channel_count == 0
    assert opened.channels[0].get_state() is grpc.ChannelConnectivity.SHUTDOWN


async def test_drain_waits_for_the_last_call_but_no_longer_than_the_grace() -> None:
    pool, _, _ = make_pool()
    lease = pool.acquire()
    drained = asyncio.get_running_loop().create_task(pool.drain(grace=30.0))
    await asyncio.sleep(0.01)
    assert not drained.done() and pool.draining
    await give_back(pool, lease)
    await asyncio.wait_for(drained, 5.0)
    stuck, _, _ = make_pool()
    stuck.acquire()
    await asyncio.wait_for(stuck.drain(grace=0.0), 5.0)  # the call is cut off
    assert stuck.channel_count == 0


async def test_releasing_more_than_was_taken_is_caught() -> None:
    pool, _, _ = make_pool()
    lease = pool.acquire()
    await give_back(pool, lease)
    with pytest.raises(AssertionError, match="in-flight went negative"):
        await give_back(pool, lease)
    await pool.close()


async def test_the_primary_channel_reports_a_failed_connect_and_none_before_it_opens() -> None:
    pool, _, _ = make_pool(health_backoff_initial=0.05, health_backoff_max=0.05)
    assert not pool.primary_failed()
    channel = pool.primary_channel()
    channel.get_state(try_to_connect=True)  # nothing listens on port 9
    for _ in range(200):
        if pool.primary_failed():
            break
        await asyncio.sleep(0.02)
    assert pool.primary_failed()
    assert "channels=1" in repr(pool)
    await pool.close()


class Tracked:
    """A real channel that records its closing, in order with the test's own events."""

    def __init__(self, channel: grpc.aio.Channel, events: list[str], name: str) -> None:
        self._channel, self._events, self.name = channel, events, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._channel, attribute)

    async def close(self, grace: float | None = None) -> None:
        self._events.append(f"close {self.name}")
        await self._channel.close(grace)


async def test_a_sweep_replaces_every_channel_of_older_credentials() -> None:
    events: list[str] = []
    generation = [0]
    opened: list[Any] = []  # Tracked channels, standing in for grpc.aio.Channel

    def open_channel(target: str, options: list[tuple[str, Any]], _: Sequence[Any]) -> Any:
        channel = Tracked(grpc.aio.insecure_channel(target, options=options), events, "")
        channel.name = f"#{len(opened) + 1}(gen {generation[0]})"
        opened.append(channel)
        return channel

    async def new_primary() -> None:
        events.append("watch moved")

    config = PoolConfig(max_concurrent_per_channel=1, max_channels=3)
    pool = ChannelPool(
        ADDRESS, config, OWNER, open_channel, clock=FakeClock(), generation=lambda: generation[0]
    )
    busy, idle = pool.acquire(), pool.acquire()
    await give_back(pool, idle)
    await pool.prune(new_primary=new_primary)
    assert events == [] and pool.channel_count == 2  # same generation: nothing changes

    generation[0] = 1  # the TLS files changed and were taken up
    await pool.prune(new_primary=new_primary)
    # The watch moved to the new first channel before the old first one closed; the busy
    # stale channel stays open for its call, but takes no new lease.
    assert events == ["watch moved", "close #2(gen 0)"]
    assert pool.channel_count == 1 and pool.primary_channel() is opened[2]
    fresh = pool.acquire()
    assert fresh.channel is opened[2] and pool.in_flight == 2
    await give_back(pool, busy)
    assert events[-1] == "close #1(gen 0)"  # its last call ended
    await give_back(pool, fresh)
    assert pool.in_flight == 0 and pool.channel_count == 1
    await pool.prune(new_primary=new_primary)
    assert len(events) == 3  # nothing stale is left
    await pool.close()
    assert events[-1] == "close #3(gen 1)"


async def test_closing_also_closes_retiring_channels_and_a_draining_pool_never_rotates() -> None:
    events: list[str] = []
    generation = [0]

    def open_channel(target: str, options: list[tuple[str, Any]], _: Sequence[Any]) -> Any:
        return Tracked(grpc.aio.insecure_channel(target), events, f"gen {generation[0]}")

    pool = ChannelPool(
        ADDRESS,
        PoolConfig(),
        OWNER,
        open_channel,
        clock=FakeClock(),
        generation=lambda: generation[0],
    )
    pool.acquire()  # never released: its channel retires busy
    generation[0] = 1
    await pool.prune()
    assert events == [] and pool.channel_count == 1
    pool.start_draining()
    generation[0] = 2
    await pool.prune()  # draining: no new channel for credentials nobody will use
    assert pool.channel_count == 1
    await pool.close()
    assert sorted(events) == ["close gen 0", "close gen 1"]
