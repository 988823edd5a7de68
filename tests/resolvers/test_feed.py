"""AddressFeed, FeedResolver's lifecycle, and DiscoveryBackoff."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._discovery_backoff import DiscoveryBackoff
from client._feed import AddressFeed, FeedResolver
from tests.resolvers.helpers import Collector, addrs


async def test_feed_publishes_only_changes_and_gives_latecomers_the_latest() -> None:
    feed = AddressFeed()
    early = Collector(feed.subscribe())
    assert feed.publish(addrs("127.0.0.2"))
    assert not feed.publish(addrs("127.0.0.2"))
    await early.wait_for(1)
    assert feed.publish(addrs("127.0.0.3"))
    late = Collector(feed.subscribe())
    assert await late.wait_for(1) == addrs("127.0.0.3")
    await early.wait_for(2)
    feed.close()
    assert not feed.publish(addrs("127.0.0.4"))
    await early.wait_ended()
    await late.wait_ended()
    assert early.sets == [addrs("127.0.0.2"), addrs("127.0.0.3")]


async def test_a_slow_consumer_skips_replaced_sets() -> None:
    feed = AddressFeed()
    feed.publish(addrs("127.0.0.2"))
    feed.publish(frozenset())
    feed.publish(addrs("127.0.0.3"))
    updates = feed.subscribe()
    assert await anext(updates) == addrs("127.0.0.3")
    feed.close()
    with pytest.raises(StopAsyncIteration):
        await anext(updates)


class _Broken(FeedResolver):
    def resolve_now(self) -> None:
        return None

    async def _run(self) -> None:
        self._publish(addrs("127.0.0.2"))
        await asyncio.sleep(0)
        raise RuntimeError("a bug")


async def test_a_crashed_resolver_task_ends_the_iterators(caplog: pytest.LogCaptureFixture) -> None:
    resolver = _Broken()
    with caplog.at_level(logging.ERROR, logger="client._feed"):
        collector = Collector(resolver.updates())
        await collector.wait_ended()
    assert collector.sets == [addrs("127.0.0.2")]
    assert "resolver task failed" in caplog.text
    await resolver.close()


def test_backoff_sequence_is_exact_without_jitter() -> None:
    backoff = DiscoveryBackoff(initial=0.5, multiplier=3.0, cap=10.0, jitter=0.0)
    assert [backoff.delay(n, lambda: 0.7) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert backoff.delay(10**6, lambda: 0.0) == 10.0  # no overflow


def test_jitter_only_shortens() -> None:
    backoff = DiscoveryBackoff(initial=2.0, cap=2.0, jitter=0.5)
    assert backoff.delay(1, lambda: 0.0) == 1.0
    assert backoff.delay(1, lambda: 1.0) == 2.0


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_never_exceeds_its_cap(failures: int, r: float, jitter: float) -> None:
    backoff = DiscoveryBackoff(initial=0.1, multiplier=2.0, cap=7.0, jitter=jitter)
    delay = backoff.delay(failures, lambda: r)
    assert (1 - jitter) * min(7.0, 0.1 * 2.0 ** min(failures - 1, 100)) - 1e-9 <= delay <= 7.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0.0}, {"multiplier": 0.5}, {"initial": 2.0, "cap": 1.0}, {"jitter": 1.5}],
)
def test_backoff_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        DiscoveryBackoff(**kwargs)


def test_backoff_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="failures"):
        DiscoveryBackoff().delay(0, lambda: 0.0)
