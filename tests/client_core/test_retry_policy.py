"""RetryPolicy (validation, backoff sequence, jitter bounds, classification) and RetryBudget."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._retry import (
    DEFAULT_RETRYABLE_CODES,
    RetryBudget,
    RetryPolicy,
    is_local_transport_failure,
    is_stream_removed,
    pushback_delay,
)

from .fakes import FakeClock, rpc_error
from .strategies import PROPERTY, policies, retry_numbers, seeds

# -- Validation --------------------------------------------------------------------


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (4, 0.05, 1.0)
    assert (policy.multiplier, policy.jitter, policy.per_attempt_timeout) == (2.0, True, None)
    assert policy.retryable_codes == frozenset({grpc.StatusCode.UNAVAILABLE})
    assert policy.retry_stream_removed is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_backoff": 0}, "initial_backoff"),
        ({"initial_backoff": -0.1}, "initial_backoff"),
        ({"initial_backoff": math.nan}, "initial_backoff"),
        ({"initial_backoff": "0.1"}, "initial_backoff"),
        ({"max_backoff": math.inf}, "max_backoff"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "max_backoff .* must be >= initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": math.inf}, "multiplier"),
        ({"multiplier": False}, "multiplier"),
        ({"per_attempt_timeout": 0}, "per_attempt_timeout"),
        ({"per_attempt_timeout": -1.0}, "per_attempt_timeout"),
        ({"per_attempt_timeout": math.nan}, "per_attempt_timeout"),
        ({"retryable_codes": frozenset({grpc.StatusCode.OK})}, "non-OK"),
        ({"retryable_codes": frozenset({14})}, "non-OK"),
        ({"retryable_codes": "UNAVAILABLE"}, "collection"),
        ({"retryable_codes": 14}, "collection"),
    ],
)
def test_invalid_policies_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**changes)


def test_retryable_codes_accept_any_collection_and_become_frozen() -> None:
    policy = RetryPolicy(retryable_codes=[grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED])  # type: ignore[arg-type]
    assert policy.retryable_codes == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    assert isinstance(policy.retryable_codes, frozenset)
    assert hash(policy) == hash(policy.with_())


def test_an_empty_code_set_is_valid_and_retries_nothing() -> None:
    policy = RetryPolicy(retryable_codes=frozenset())
    assert not policy.is_retryable_error(rpc_error(grpc.StatusCode.UNAVAILABLE))


def test_with_returns_a_new_validated_policy_and_leaves_the_old_one() -> None:
    policy = RetryPolicy()
    changed = policy.with_(max_attempts=2, jitter=False)
    assert (changed.max_attempts, changed.jitter) == (2, False)
    assert (policy.max_attempts, policy.jitter) == (4, True)
    with pytest.raises(ValueError, match="max_attempts"):
        policy.with_(max_attempts=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


# -- Backoff -----------------------------------------------------------------------


def test_exact_backoff_sequence_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=False)
    delays = [policy.backoff(n, random.Random(0)) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_exact_backoff_sequence_with_a_fractional_multiplier() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=3.0, multiplier=1.5, jitter=False)
    delays = [policy.backoff(n, random.Random(0)) for n in range(1, 6)]
    assert delays == pytest.approx([1.0, 1.5, 2.25, 3.0, 3.0])


def test_multiplier_one_is_a_constant_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.3, max_backoff=0.3, multiplier=1.0, jitter=False)
    assert {policy.backoff(n, random.Random(0)) for n in range(1, 50)} == {0.3}


def test_huge_retry_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=2.0, multiplier=4.0, jitter=False)
    assert policy.backoff(100_000, random.Random(0)) == 2.0


def test_retry_number_starts_at_one() -> None:
    with pytest.raises(ValueError, match="retry_number"):
        RetryPolicy().backoff(0, random.Random(0))


def test_jitter_draws_from_the_rng() -> None:
    policy = RetryPolicy(initial_backoff=0.4, max_backoff=10.0)
    expected = 0.8 * random.Random(5).random()
    assert policy.backoff(2, random.Random(5)) == pytest.approx(expected)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0)
    rng = random.Random(17)
    delays = [policy.backoff(1, rng) for _ in range(2000)]
    assert min(delays) < 0.05
    assert max(delays) > 0.95


@PROPERTY
@given(policy=policies(), retry_number=retry_numbers, seed=seeds)
def test_backoff_stays_within_zero_and_its_cap(
    policy: RetryPolicy, retry_number: int, seed: int
) -> None:
    delay = policy.backoff(retry_number, random.Random(seed))
    cap = policy.capped_backoff(retry_number)
    assert 0 <= delay <= cap <= policy.max_backoff
    if not policy.jitter:
        assert delay == cap


@PROPERTY
@given(policy=policies(jitter=False), retry_number=retry_numbers)
def test_backoff_without_jitter_never_shrinks(policy: RetryPolicy, retry_number: int) -> None:
    rng = random.Random(0)
    assert policy.backoff(retry_number + 1, rng) >= policy.backoff(retry_number, rng)


# -- Classification ----------------------------------------------------------------


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_only_unavailable_is_retryable_by_default(code: grpc.StatusCode) -> None:
    retryable = RetryPolicy().is_retryable_error(rpc_error(code, "Stream removed"))
    assert retryable == (code in DEFAULT_RETRYABLE_CODES)


def test_stream_removed_is_recognised_narrowly() -> None:
    assert is_stream_removed(rpc_error(grpc.StatusCode.UNKNOWN, "Stream removed"))
    assert is_stream_removed(rpc_error(grpc.StatusCode.UNKNOWN, " stream REMOVED "))
    assert not is_stream_removed(rpc_error(grpc.StatusCode.UNKNOWN, "Exception calling method"))
    assert not is_stream_removed(rpc_error(grpc.StatusCode.INTERNAL, "Stream removed"))
    assert not is_stream_removed(grpc.RpcError())


def test_stream_removed_is_retryable_only_when_enabled() -> None:
    error = rpc_error(grpc.StatusCode.UNKNOWN, "Stream removed")
    other_unknown = rpc_error(grpc.StatusCode.UNKNOWN, "boom")
    assert not RetryPolicy().is_retryable_error(error)
    enabled = RetryPolicy(retry_stream_removed=True)
    assert enabled.is_retryable_error(error)
    assert not enabled.is_retryable_error(other_unknown)


def test_grpcios_own_internal_for_a_broken_send_counts_as_unavailable() -> None:
    # What grpcio raised in the fault suite when a replica died mid client stream.
    local = rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core")
    assert is_local_transport_failure(local)
    assert RetryPolicy().is_retryable_error(local)
    # A server's INTERNAL has its own message, or trailers: never retried.
    assert not RetryPolicy().is_retryable_error(rpc_error(grpc.StatusCode.INTERNAL, "boom"))
    from_server = rpc_error(
        grpc.StatusCode.INTERNAL, "Internal error from Core", trailing=[("x-replica", "users-1")]
    )
    assert not is_local_transport_failure(from_server)
    # A policy that does not retry UNAVAILABLE does not retry its local twin either.
    deadline_only = RetryPolicy(retryable_codes=frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}))
    assert not deadline_only.is_retryable_error(local)


def test_a_bare_rpc_error_counts_as_unknown() -> None:
    assert not RetryPolicy().is_retryable_error(grpc.RpcError())
    policy = RetryPolicy(retryable_codes=frozenset({grpc.StatusCode.UNKNOWN}))
    assert policy.is_retryable_error(grpc.RpcError())


# -- Pushback parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), None),
        (("250",), 0.25),
        (("0",), 0.0),
        ((" 1500 ",), 1.5),
        (("2147483647",), 2147483.647),
        (("-1",), math.inf),
        (("2147483648",), math.inf),
        (("1.5",), math.inf),
        (("soon",), math.inf),
        (("",), math.inf),
        (("100", "-1"), 0.1),
    ],
)
def test_pushback_values(values: tuple[str, ...], expected: float | None) -> None:
    error = rpc_error(
        grpc.StatusCode.UNAVAILABLE, trailing=[("grpc-retry-pushback-ms", v) for v in values]
    )
    assert pushback_delay(error) == expected


def test_pushback_of_a_bare_rpc_error_is_none() -> None:
    assert pushback_delay(grpc.RpcError()) is None


# -- RetryBudget -------------------------------------------------------------------


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": math.inf}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"min_per_second": math.nan}, "min_per_second"),
        ({"max_saved": -1}, "max_saved"),
    ],
)
def test_invalid_budgets_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs)


def test_a_new_budget_holds_one_second_of_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=10, clock=FakeClock())
    assert spend_all(budget) == 10


def test_the_floor_refills_with_time_but_saves_at_most_one_second() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=10, clock=clock)
    spend_all(budget)
    clock.advance(0.35)
    assert spend_all(budget) == 3
    clock.advance(60)
    assert spend_all(budget) == 10


def test_the_ratio_allows_one_retry_per_five_calls() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, clock=FakeClock())
    assert not budget.try_spend()
    for _ in range(4):
        budget.on_call()
    assert not budget.try_spend()
    budget.on_call()
    assert budget.try_spend()
    assert not budget.try_spend()
    for _ in range(50):
        budget.on_call()
    assert spend_all(budget) == 10


def test_saved_ratio_tokens_are_capped() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, clock=FakeClock(), max_saved=7)
    for _ in range(1000):
        budget.on_call()
    assert spend_all(budget) == 7


def test_floor_is_spent_before_saved_tokens() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=2, clock=clock)
    budget.on_call()
    assert budget.available == pytest.approx(3)
    assert budget.try_spend()
    assert budget.try_spend()
    assert budget.available == pytest.approx(1)  # the saved token is still there
    clock.advance(1)
    assert budget.available == pytest.approx(3)


def test_a_zero_budget_never_allows_a_retry() -> None:
    budget = RetryBudget(ratio=0, min_per_second=0, clock=FakeClock())
    budget.on_call()
    assert not budget.can_spend()
    assert not budget.try_spend()


def test_can_spend_tells_what_try_spend_would_do_and_takes_nothing() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_per_second=1, clock=clock)
    assert budget.can_spend()  # the floor's one token
    assert budget.available == pytest.approx(1)
    assert budget.try_spend()
    assert not budget.can_spend()
    budget.on_call()
    assert not budget.can_spend()  # half a token saved: not a whole retry
    budget.on_call()
    assert budget.can_spend()
    assert budget.available == pytest.approx(1)


def test_a_clock_that_steps_back_does_not_drain_the_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=4, clock=clock)
    clock.now -= 10
    assert spend_all(budget) == 4


@PROPERTY
@given(
    ratio=st.floats(min_value=0, max_value=1),
    per_second=st.floats(min_value=0, max_value=50),
    steps=st.lists(
        st.tuples(st.sampled_from(["call", "spend", "wait"]), st.floats(0, 2)), max_size=200
    ),
)
def test_retries_never_exceed_ratio_times_calls_plus_floor(
    ratio: float, per_second: float, steps: list[tuple[str, float]]
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=per_second, clock=clock)
    calls = spent = 0
    start = clock()
    for action, seconds in steps:
        if action == "call":
            budget.on_call()
            calls += 1
        elif action == "spend":
            spent += budget.try_spend()
        else:
            clock.advance(seconds)
        # One second's worth of floor to start with, then min_per_second per second.
        assert spent <= ratio * calls + per_second * (1 + clock() - start) + 1e-6
        assert budget.available >= 0


def test_repr_shows_the_tokens() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=3, clock=FakeClock())
    assert repr(budget) == "RetryBudget(ratio=0.5, min_per_second=3, available=3.00)"
