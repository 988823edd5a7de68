"""HedgingPolicy (an immutable, validated value) and the adaptive hedge delay."""

from __future__ import annotations

import math
import random

import grpc
import pytest

from client import HedgingPolicy
from client._hedge import HedgeDelay
from client._histogram import exact_percentile
from tests.client_core.fakes import rpc_error


def test_the_defaults_are_adaptive_with_three_copies_and_unavailable_non_fatal() -> None:
    policy = HedgingPolicy()
    assert policy.adaptive
    assert policy.max_attempts == 3
    assert policy.non_fatal_codes == {grpc.StatusCode.UNAVAILABLE}
    assert policy.min_delay <= policy.max_delay


def test_with_returns_a_validated_copy() -> None:
    policy = HedgingPolicy()
    fixed = policy.with_(delay=0.02)
    assert fixed.delay == 0.02 and not fixed.adaptive
    assert policy.delay is None  # unchanged
    with pytest.raises(ValueError, match="max_attempts"):
        policy.with_(max_attempts=6)
    with pytest.raises(AttributeError):
        policy.delay = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 6}, "gRFC A6"),
        ({"max_attempts": True}, "max_attempts"),
        ({"delay": 0}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"min_delay": -1}, "min_delay"),
        ({"max_delay": 0.001, "min_delay": 0.002}, "max_delay"),
        ({"percentile": 1.0}, "percentile"),
        ({"percentile": 0}, "percentile"),
        ({"warmup": -1}, "warmup"),
        ({"window": 0}, "window"),
        ({"non_fatal_codes": "UNAVAILABLE"}, "non_fatal_codes"),
        ({"non_fatal_codes": {grpc.StatusCode.OK}}, "non_fatal_codes"),
        ({"non_fatal_codes": {14}}, "non_fatal_codes"),
    ],
)
def test_invalid_fields_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HedgingPolicy(**changes)  # type: ignore[arg-type]


def test_codes_are_kept_as_a_frozenset() -> None:
    policy = HedgingPolicy(non_fatal_codes=[grpc.StatusCode.UNAVAILABLE])  # type: ignore[arg-type]
    assert policy.non_fatal_codes == frozenset({grpc.StatusCode.UNAVAILABLE})
    assert hash(policy)


def test_what_is_non_fatal() -> None:
    policy = HedgingPolicy()
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE)
    expired = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert policy.is_non_fatal(unavailable, per_attempt_limited=False)
    assert not policy.is_non_fatal(rpc_error(grpc.StatusCode.NOT_FOUND), False)
    assert not policy.is_non_fatal(expired, per_attempt_limited=False)  # the call's deadline
    assert policy.is_non_fatal(expired, per_attempt_limited=True)  # the copy's own timeout
    assert policy.is_non_fatal(
        rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core"), False
    )
    assert not policy.is_non_fatal(rpc_error(grpc.StatusCode.INTERNAL, "the store broke"), False)


def test_a_fixed_delay_never_moves() -> None:
    delay = HedgeDelay(HedgingPolicy(delay=0.03))
    for _ in range(500):
        delay.observe(1.0)
    assert delay.current() == 0.03
    assert delay.seen == 0


def test_a_cold_delay_is_the_cap_until_the_warm_up_is_over() -> None:
    policy = HedgingPolicy(warmup=40, min_delay=0.001, max_delay=0.2)
    delay = HedgeDelay(policy)
    for _ in range(39):
        delay.observe(0.004)
        assert delay.current() == 0.2  # a cold client hedges only the very slow
    delay.observe(0.004)
    assert delay.current() == pytest.approx(0.008)  # Equal latencies: the floor, two medians.


def test_the_adaptive_delay_converges_to_the_percentile() -> None:
    rng = random.Random(3)
    policy = HedgingPolicy(percentile=0.95, warmup=10, window=512, min_delay=1e-4, max_delay=1)
    delay = HedgeDelay(policy)
    latencies = [rng.lognormvariate(-5, 0.5) for _ in range(2048)]
    for latency in latencies:
        delay.observe(latency, "a")
    # After a multiple of the refresh period: exactly the window's percentile.
    assert delay.current() == exact_percentile(latencies[-512:], 0.95)


def test_where_latencies_bunch_up_the_delay_is_two_medians_not_the_percentile() -> None:
    # A saturated client: every call waits in its own queue, 15 to 20 ms, p99 about 20.
    # A hedge at the p99 would need the first copy to take little more than two medians.
    rng = random.Random(7)
    delay = HedgeDelay(HedgingPolicy(warmup=10, window=512, min_delay=1e-4, max_delay=1))
    latencies = [rng.uniform(0.015, 0.020) for _ in range(1024)]
    for n, latency in enumerate(latencies):
        delay.observe(latency, "abc"[n % 3])
    window = range(1024 - 512, 1024)
    medians = sorted(
        exact_percentile([latencies[n] for n in window if n % 3 == k], 0.5) for k in range(3)
    )
    assert delay.current() > exact_percentile(latencies[-512:], 0.99)
    assert delay.current() == pytest.approx(2 * medians[1], rel=0.02)


def test_the_adaptive_delay_follows_a_change_within_one_window() -> None:
    policy = HedgingPolicy(warmup=10, window=64, min_delay=1e-4, max_delay=1)
    delay = HedgeDelay(policy)
    for _ in range(256):
        delay.observe(0.002, "a")
    assert delay.current() == pytest.approx(0.004)  # Two medians: the floor.
    for _ in range(64):
        delay.observe(0.010, "a")
    assert delay.current() == pytest.approx(0.020)


@pytest.mark.parametrize(
    ("latency", "expected"), [(1e-5, 0.002), (0.05, 0.1), (0.06, math.inf), (5.0, math.inf)]
)
def test_the_adaptive_delay_stays_within_its_bounds(latency: float, expected: float) -> None:
    delay = HedgeDelay(HedgingPolicy(warmup=1, min_delay=0.002, max_delay=0.1))
    for _ in range(64):
        delay.observe(latency)
    assert delay.current() == expected


def test_one_slow_endpoint_of_three_does_not_set_the_delay() -> None:
    # A third of the latencies are 80 ms: one percentile over all of them would be 80 ms
    # and no call would ever be hedged; the typical endpoint's p99 is 3 ms.
    delay = HedgeDelay(HedgingPolicy(warmup=10, window=300, min_delay=1e-4, max_delay=1))
    for _ in range(100):
        for endpoint, latency in (("a", 0.003), ("b", 0.003), ("slow", 0.080)):
            delay.observe(latency, endpoint)
    assert delay.current() == pytest.approx(0.006)  # Two of a typical endpoint's medians.


def test_an_endpoint_that_stopped_answering_leaves_the_window() -> None:
    # Two endpoints were slow, then gone (replaced): once the window holds only the
    # new endpoints' latencies, the old ones count for nothing.
    delay = HedgeDelay(HedgingPolicy(warmup=10, window=64, min_delay=1e-4, max_delay=1))
    for _ in range(32):
        for endpoint in ("old-1", "old-2", "new"):
            delay.observe(0.050, endpoint)
    for _ in range(64):
        delay.observe(0.004, "new")
    assert delay.current() == pytest.approx(0.008)


def test_memory_is_bounded_by_the_window_whatever_the_endpoints() -> None:
    window = 64
    delay = HedgeDelay(HedgingPolicy(warmup=1, window=window, min_delay=1e-4, max_delay=1))
    for n in range(10_000):  # A fresh endpoint every call: churn without end.
        delay.observe(0.001 * (1 + n % 7), f"endpoint-{n}")
        kept = delay._sorted  # What the window keeps, after every latency.
        assert len(kept) <= window
        assert sum(len(latencies) for latencies in kept.values()) <= window
        assert len(delay._order) <= window


def test_the_window_keeps_each_endpoints_latencies_in_order_and_only_the_last_ones() -> None:
    window = 50
    delay = HedgeDelay(HedgingPolicy(warmup=1, window=window, min_delay=1e-4, max_delay=1))
    seen: list[tuple[str, float]] = []
    for n in range(1_000):
        endpoint, latency = f"e{n % 3}", ((n * 7919) % 101) / 1000
        delay.observe(latency, endpoint)
        seen.append((endpoint, latency))
    last = seen[-window:]
    for endpoint in ("e0", "e1", "e2"):
        assert delay._sorted[endpoint] == sorted(v for e, v in last if e == endpoint)


def test_invalid_latencies_are_ignored() -> None:
    delay = HedgeDelay(HedgingPolicy(warmup=1))
    delay.observe(float("nan"))
    delay.observe(-1.0)
    delay.observe(float("inf"))
    assert delay.seen == 0
    assert "adaptive" in repr(delay)
