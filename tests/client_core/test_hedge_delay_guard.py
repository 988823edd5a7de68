"""The adaptive hedge delay's two guards: an early recomputation on a shift, and the back-off.

1. When 4 latencies since the last recomputation were above the delay (a p99
   lets through 0.32 of 32), the delay is recomputed at once instead of after
   32 latencies: a load step no longer hedges every call until then.
2. Hedged calls whose hedges lost multiply the adaptive delay by a factor that
   grows 1.1x per loss and shrinks 1.1**9x per win (it holds still at one win
   in ten), up to where the delay is ``max_delay``.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from client import HedgingPolicy
from client._hedge import HedgeDelay, Won, call_with_hedging
from client.testing import eventually
from tests.client.test_hedge_client import HOLD, Holding, pair

pytestmark = pytest.mark.timeout(30)

#: The back-off's steps (the module's constants, restated: the tests pin them).
GROW = 1.1
SHRINK = 1.1**9


@pytest.fixture
def refreshes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each recomputation of any HedgeDelay, as the number of latencies seen then."""
    seen: list[int] = []
    recompute = HedgeDelay._refresh

    def counted(self: HedgeDelay) -> None:
        seen.append(self.seen)
        recompute(self)

    monkeypatch.setattr(HedgeDelay, "_refresh", counted)
    return seen


def adaptive(delay: float) -> HedgeDelay:
    """A warm adaptive delay at ``delay`` (32 equal latencies), ``max_delay`` 0.1."""
    hedge = HedgeDelay(HedgingPolicy(warmup=10, window=512, min_delay=1e-4, max_delay=0.1))
    for _ in range(32):
        hedge.observe(delay, "a")
    assert hedge.current() == pytest.approx(delay)
    return hedge


# 1. The early recomputation.


def test_a_step_up_is_followed_after_four_latencies_not_thirty_two(
    refreshes: list[int],
) -> None:
    hedge = adaptive(0.002)
    refreshes.clear()
    for _ in range(3):
        hedge.observe(0.010, "a")
    assert hedge.current() == pytest.approx(0.002)  # 3 above: a p99's tail may do that
    hedge.observe(0.010, "a")
    # The p99 of 36 latencies is their highest, one of the new: followed at once.
    assert refreshes == [36]
    assert hedge.current() == pytest.approx(0.010)


def test_a_step_up_on_three_endpoints_is_followed_within_eight_latencies() -> None:
    hedge = HedgeDelay(HedgingPolicy(warmup=10, min_delay=1e-4, max_delay=1))
    endpoints = ("a", "b", "c")
    for n in range(320):
        hedge.observe(0.002, endpoints[n % 3])
    assert hedge.current() == pytest.approx(0.002)
    # Each endpoint's p99 is its 2nd highest of about 108: after 4 latencies (2, 1, 1 per
    # endpoint) only one endpoint's moved, after 8 (3, 3, 2) every one did.
    for n in range(8):
        hedge.observe(0.008, endpoints[n % 3])
    assert hedge.current() == pytest.approx(0.008)  # 24 latencies before the regular one


def test_a_stationary_tail_recomputes_on_schedule(refreshes: list[int]) -> None:
    rng = random.Random(11)
    hedge = HedgeDelay(HedgingPolicy())
    endpoints = [object() for _ in range(3)]
    above = 0
    for n in range(32 * 1000):
        latency = rng.lognormvariate(-6.2, 0.3)
        above += latency > hedge.current()
        hedge.observe(latency, endpoints[n % 3])
    assert 0.005 < above / 32_000 < 0.02  # the p99 lets about 1 % through
    regular = [n for n in refreshes if n % 32 == 0 or n == 50]
    early = len(refreshes) - len(regular)
    # 4 of 31 above a p99: about once in 4000 periods.
    assert len(regular) == 1000 and early <= 2


def test_a_slow_endpoint_does_not_trigger_early_recomputations(refreshes: list[int]) -> None:
    # One replica of three 10x slower: nearly all its latencies are above the delay,
    # but its own p99 is above it too, and the median ignores it.
    rng = random.Random(5)
    hedge = HedgeDelay(HedgingPolicy())
    endpoints = [object() for _ in range(3)]
    for n in range(32 * 200):
        slow = 10 if n % 3 == 2 else 1
        hedge.observe(rng.lognormvariate(-6.2, 0.3) * slow, endpoints[n % 3])
    assert all(n % 32 == 0 or n == 50 for n in refreshes)
    assert hedge.current() < 0.005


def test_no_early_recomputation_before_the_warm_up(refreshes: list[int]) -> None:
    hedge = HedgeDelay(HedgingPolicy(warmup=40, max_delay=0.2))
    for n in range(39):
        hedge.observe(0.5 if n % 2 else 0.001, "a")  # half of them far above anything
    assert refreshes == []
    assert hedge.current() == 0.2


# 2. The back-off.


def test_losing_hedges_back_off_to_max_delay_and_no_further() -> None:
    hedge = adaptive(0.004)  # max_delay 0.1: the factor's cap is 25
    assert hedge.backoff == 1.0
    for n in range(1, 34):  # 1.1**33 is 23.2, 1.1**34 is 25.5
        hedge.hedged(won=False)
        assert hedge.backoff == pytest.approx(GROW**n)
        assert hedge.current() == pytest.approx(0.004 * GROW**n)
    for _ in range(20):
        hedge.hedged(won=False)
    assert hedge.backoff == pytest.approx(25)
    assert hedge.current() == pytest.approx(0.1)
    assert hedge.current() <= 0.1


def test_winning_hedges_bring_the_factor_back_to_one() -> None:
    hedge = adaptive(0.004)
    for _ in range(60):
        hedge.hedged(won=False)
    hedge.hedged(won=True)
    assert hedge.backoff == pytest.approx(25 / SHRINK)
    for _ in range(3):  # 25 / 2.36**4 < 1: back to 1, not below
        hedge.hedged(won=True)
    assert hedge.backoff == 1.0
    assert hedge.current() == pytest.approx(0.004)
    hedge.hedged(won=True)
    assert hedge.backoff == 1.0


def test_one_win_in_ten_holds_the_factor_still() -> None:
    hedge = adaptive(0.002)  # cap 50
    for _ in range(10):
        hedge.hedged(won=False)
    start = hedge.backoff
    assert start == pytest.approx(GROW**10)
    for _ in range(100):
        hedge.hedged(won=True)
        for _ in range(9):
            hedge.hedged(won=False)
        assert hedge.backoff == pytest.approx(start)  # never drifting, cycle after cycle


@pytest.mark.parametrize(("losses", "end"), [(4, GROW**4), (19, 50.0)])
def test_more_wins_than_the_target_shrink_it_fewer_grow_it(losses: int, end: float) -> None:
    hedge = adaptive(0.002)  # cap 50
    for _ in range(10):
        hedge.hedged(won=False)
    for _ in range(100):
        hedge.hedged(won=True)
        for _ in range(losses):
            hedge.hedged(won=False)
    # One win in 5 (20 %): each win takes it back to 1, then 4 losses. One in 20 (5 %):
    # up to the cap, where a win and 19 losses end at the cap again.
    assert hedge.backoff == pytest.approx(end)


def test_the_factor_follows_the_adaptive_delay_and_its_cap() -> None:
    hedge = adaptive(0.004)
    for _ in range(8):
        hedge.hedged(won=False)
    factor = hedge.backoff
    for _ in range(32):  # a regular recomputation: the same factor, on the new delay
        hedge.observe(0.002, "b")
    assert hedge.backoff == factor
    assert hedge.current() == pytest.approx(0.002 * factor)  # the lower median of a and b
    for _ in range(32 * 20):
        hedge.observe(0.05, "a")  # a is slow now: the window has only 0.05 left
    assert hedge.current() == pytest.approx(0.1)  # 0.05 x 2.14, capped
    assert hedge.backoff == pytest.approx(2)  # so is the factor: 0.1 / 0.05


def test_a_fixed_delay_ignores_both_guards(refreshes: list[int]) -> None:
    hedge = HedgeDelay(HedgingPolicy(delay=0.03))
    for _ in range(100):
        hedge.observe(1.0, "a")
        hedge.hedged(won=False)
    assert hedge.current() == 0.03
    assert hedge.backoff == 1.0
    assert refreshes == []


def test_an_infinite_delay_stays_infinite_and_keeps_its_factor() -> None:
    hedge = adaptive(0.004)
    for _ in range(5):
        hedge.hedged(won=False)
    factor = hedge.backoff
    for _ in range(512):  # every replica above max_delay: no hedge at all
        hedge.observe(0.5, "a")
    assert hedge.current() == math.inf
    assert hedge.backoff == factor
    hedge.hedged(won=False)  # a copy sent after a failure, which lost
    assert hedge.current() == math.inf
    assert hedge.backoff == pytest.approx(factor * GROW)
    for _ in range(512):
        hedge.observe(0.004, "a")
    assert hedge.current() == pytest.approx(0.004 * factor * GROW)


# What the client needs to know of a call: whether a hedge went out.


async def _pick(used: frozenset[object], max_wait: float | None) -> object:
    return next(e for e in ("a", "b", "c") if e not in used)


async def test_won_says_how_many_copies_were_sent() -> None:
    async def a_is_stuck(endpoint: object, copy: object) -> object:
        if endpoint == "a":
            await asyncio.sleep(HOLD)
        return endpoint

    policy = HedgingPolicy(max_attempts=3)
    won = await call_with_hedging(
        _pick, a_is_stuck, policy=policy, delay=0.01, budget=None, deadline=None
    )
    assert (won.value, won.number, won.sent) == ("b", 2, 2)
    fast = await call_with_hedging(
        _pick,
        lambda endpoint, copy: asyncio.sleep(0, endpoint),
        policy=policy,
        delay=1.0,
        budget=None,
        deadline=None,
    )
    assert (fast.value, fast.number, fast.sent) == ("a", 1, 1)
    assert Won("x", 2, 3) == Won("x", 2)  # the count is not part of the outcome


async def test_the_client_backs_off_when_its_hedge_lost() -> None:
    # The first copy answers after 0.25 s, past the 0.02 s delay: the hedge went to a
    # replica that holds it, and lost.
    first, second = Holding("first", delay=0.25), Holding("second", delay=HOLD)
    policy = HedgingPolicy(min_delay=0.01, max_delay=1.0, warmup=10)
    async with pair(first, second, hedging={"GetUser": policy}) as client:
        for _ in range(32):
            client._hedges["GetUser"].observe(0.02, None)
        user = await asyncio.wait_for(client.get_user("u-1"), 5)
        assert user.name == "first"
        await eventually(lambda: second.cancelled == 1)
        stats = client.stats().hedging["GetUser"]
        assert (stats.sent, stats.won) == (1, 0)
        assert stats.backoff == pytest.approx(GROW)
        assert stats.delay == pytest.approx(0.02 * GROW)


async def test_a_listing_whose_hedge_won_shrinks_the_factor() -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    policy = HedgingPolicy(min_delay=0.01, max_delay=1.0, warmup=10)
    async with pair(slow, quick, hedging={"ListUsers": policy}) as client:
        hedge = client._hedges["ListUsers"]
        for _ in range(32):
            hedge.observe(0.02, None)
        for _ in range(10):
            hedge.hedged(won=False)
        users = [user async for user in client.list_users()]
        assert [user.name for user in users] == ["quick"] * 3
        await eventually(lambda: slow.cancelled == 1)
        stats = client.stats().hedging["ListUsers"]
        assert stats.won == 1
        assert stats.backoff == pytest.approx(GROW**10 / SHRINK)
