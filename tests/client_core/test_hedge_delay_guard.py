"""The adaptive hedge delay's guard against a shift: an early recomputation.

When 4 latencies since the last recomputation were above the delay (a p99
lets through 0.32 of 32), the delay is recomputed at once instead of after 32
latencies: a load step no longer hedges every call until then. A slow
endpoint's latencies (its median above the delay) do not count towards it.
"""

from __future__ import annotations

import random

import pytest

from client import HedgingPolicy
from client._hedge import HedgeDelay

pytestmark = pytest.mark.timeout(30)


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


def adaptive(latency: float) -> HedgeDelay:
    """A warm adaptive delay after 32 equal latencies (so at two of them), ``max_delay`` 0.1."""
    hedge = HedgeDelay(HedgingPolicy(warmup=10, window=512, min_delay=1e-4, max_delay=0.1))
    for _ in range(32):
        hedge.observe(latency, "a")
    assert hedge.current() == pytest.approx(2 * latency)
    return hedge


def test_a_step_up_is_followed_after_four_latencies_not_thirty_two(
    refreshes: list[int],
) -> None:
    hedge = adaptive(0.002)
    refreshes.clear()
    for _ in range(3):
        hedge.observe(0.010, "a")
    assert hedge.current() == pytest.approx(0.004)  # 3 above: a p99's tail may do that
    hedge.observe(0.010, "a")
    # The p99 of 36 latencies is their highest, one of the new: followed at once.
    assert refreshes == [36]
    assert hedge.current() == pytest.approx(0.010)


def test_a_step_up_on_three_endpoints_is_followed_within_eight_latencies() -> None:
    hedge = HedgeDelay(HedgingPolicy(warmup=10, min_delay=1e-4, max_delay=1))
    endpoints = ("a", "b", "c")
    for n in range(320):
        hedge.observe(0.002, endpoints[n % 3])
    assert hedge.current() == pytest.approx(0.004)  # Two medians: equal latencies.
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
    # but so is its own median, so they say nothing of a shift (the median ignores it).
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


def test_a_fixed_delay_is_never_recomputed(refreshes: list[int]) -> None:
    hedge = HedgeDelay(HedgingPolicy(delay=0.03))
    for _ in range(100):
        hedge.observe(1.0, "a")
    assert hedge.current() == 0.03
    assert refreshes == []
