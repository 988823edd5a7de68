"""call_with_retries driven by a fake clock whose sleep advances it: no test waits."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._retry import Attempt, AttemptFailed, RetryBudget, RetryPolicy, call_with_retries

from .fakes import FakeClock, Outcome, ScriptedCall, rpc_error
from .strategies import PROPERTY, policies, seeds

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
STEADY = RetryPolicy(initial_backoff=0.05, max_backoff=1.0, multiplier=2.0, jitter=False)


def unavailable(details: str = "connection refused", pushback: str | None = None) -> Any:
    trailing = [] if pushback is None else [("grpc-retry-pushback-ms", pushback)]
    return rpc_error(UNAVAILABLE, details, trailing)


class Harness:
    """One call's world: a fake clock, a scripted attempt, and what the loop did."""

    def __init__(self, script: Sequence[Outcome], *, duration: float = 0.0) -> None:
        self.clock = FakeClock()
        self.call = ScriptedCall(self.clock, script, duration)
        self.retries: list[tuple[int, grpc.StatusCode, float]] = []

    async def run(
        self,
        policy: RetryPolicy = STEADY,
        *,
        idempotent: bool = True,
        within: float | None = None,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
        attempt: Callable[[Attempt], Any] | None = None,
    ) -> str:
        result: str = await call_with_retries(
            self.call if attempt is None else attempt,
            policy=policy,
            budget=budget,
            deadline=None if within is None else self.clock() + within,
            idempotent=idempotent,
            clock=self.clock,
            sleep=self.clock.sleep,
            rng=rng,
            on_retry=lambda *args: self.retries.append(args),
        )
        return result

    @property
    def sleeps(self) -> list[float]:
        return self.clock.sleeps

    @property
    def attempts(self) -> int:
        return len(self.call.attempts)


# -- What is retried ---------------------------------------------------------------


async def test_retries_unavailable_until_success() -> None:
    h = Harness([unavailable(), unavailable(), "ok"])
    assert await h.run() == "ok"
    assert [a.number for a in h.call.attempts] == [1, 2, 3]
    assert h.sleeps == pytest.approx([0.05, 0.1])


async def test_the_first_success_ends_the_call() -> None:
    h = Harness(["ok", unavailable()])
    assert await h.run() == "ok"
    assert (h.attempts, h.sleeps, h.retries) == (1, [], [])


async def test_a_non_idempotent_call_is_not_retried() -> None:
    error = unavailable()
    h = Harness([error, "ok"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(idempotent=False)
    assert info.value is error
    assert (h.attempts, h.sleeps) == (1, [])


async def test_invalid_argument_is_not_retried_by_default() -> None:
    error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad email")
    h = Harness([error, "ok"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run()
    assert info.value is error
    assert h.attempts == 1


async def test_invalid_argument_is_retried_when_configured() -> None:
    codes = frozenset({UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT})
    h = Harness([rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "flaky"), "ok"])
    assert await h.run(STEADY.with_(retryable_codes=codes)) == "ok"
    assert h.retries == [(1, grpc.StatusCode.INVALID_ARGUMENT, 0.05)]


@pytest.mark.parametrize(
    "code", [c for c in grpc.StatusCode if c not in (grpc.StatusCode.OK, UNAVAILABLE)]
)
async def test_no_other_code_is_retried_by_default(code: grpc.StatusCode) -> None:
    h = Harness([rpc_error(code, "Stream removed"), "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(within=30.0)
    assert h.attempts == 1


async def test_stream_removed_is_retried_only_when_enabled_and_idempotent() -> None:
    removed = rpc_error(grpc.StatusCode.UNKNOWN, "Stream removed")
    enabled = STEADY.with_(retry_stream_removed=True)

    h = Harness([removed, "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run()
    assert h.attempts == 1

    h = Harness([removed, "ok"])
    assert await h.run(enabled) == "ok"
    assert h.retries == [(1, grpc.StatusCode.UNKNOWN, 0.05)]

    h = Harness([removed, "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(enabled, idempotent=False)
    assert h.attempts == 1


async def test_a_bare_rpc_error_is_handled_as_unknown() -> None:
    error = grpc.RpcError()
    h = Harness([error, "ok"])
    with pytest.raises(grpc.RpcError) as info:
        await h.run()
    assert info.value is error


async def test_other_exceptions_propagate_without_retry() -> None:
    h = Harness([KeyError("bug"), "ok"])
    with pytest.raises(KeyError):
        await h.run()
    assert h.attempts == 1


# -- Attempts and their timeouts ---------------------------------------------------


async def test_max_attempts_is_respected() -> None:
    errors = [unavailable(f"try {i}") for i in range(10)]
    h = Harness(errors)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(STEADY.with_(max_attempts=3))
    assert h.attempts == 3
    assert len(h.sleeps) == 2
    assert info.value is errors[2]  # the last error, unchanged


async def test_one_attempt_means_no_retry() -> None:
    h = Harness([unavailable(), "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(STEADY.with_(max_attempts=1))
    assert h.attempts == 1


async def test_without_deadline_or_per_attempt_timeout_attempts_are_unbounded() -> None:
    h = Harness([unavailable(), "ok"])
    await h.run()
    assert [a.timeout for a in h.call.attempts] == [None, None]


async def test_attempt_timeout_is_the_shorter_of_per_attempt_and_time_left() -> None:
    policy = STEADY.with_(per_attempt_timeout=1.0)
    h = Harness([unavailable()], duration=0.5)
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(policy, within=2.0)
    # Attempts start at t=0, 0.55, 1.15, 1.85 (each fails after 0.5 s, then sleeps
    # 0.05, 0.1, 0.2): the 3rd has 0.85 s left, the 4th 0.15 s and runs out of it.
    assert [a.timeout for a in h.call.attempts] == pytest.approx([1.0, 1.0, 0.85, 0.15])
    assert h.call.raised[-1].code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


async def test_per_attempt_timeout_is_retried_while_the_deadline_has_time() -> None:
    policy = STEADY.with_(per_attempt_timeout=1.0)
    h = Harness(["ok"], duration=3.0)  # every attempt outlives its 1 s
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(policy, within=10.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value is h.call.raised[-1]
    assert h.attempts == 4
    assert [code for _, code, _ in h.retries] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3


async def test_per_attempt_timeout_then_success() -> None:
    async def attempt(a: Attempt) -> str:
        if a.number == 1:
            h.clock.advance(a.timeout or 0)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return "ok"

    h = Harness([])
    assert await h.run(STEADY.with_(per_attempt_timeout=0.5), within=5, attempt=attempt) == "ok"


async def test_per_attempt_timeout_of_a_non_idempotent_call_is_not_retried() -> None:
    h = Harness(["ok"], duration=3.0)
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(STEADY.with_(per_attempt_timeout=1.0), within=10, idempotent=False)
    assert h.attempts == 1


async def test_deadline_exceeded_is_final_when_the_call_deadline_set_the_timeout() -> None:
    # per_attempt_timeout is longer than the call's whole deadline: the timeout
    # that expired was the call's own, so nothing is retried.
    h = Harness(["ok"], duration=3.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(STEADY.with_(per_attempt_timeout=5.0), within=2.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert h.attempts == 1


async def test_deadline_exceeded_without_per_attempt_timeout_is_not_retried() -> None:
    h = Harness([rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "server said so"), "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(within=10.0)
    assert h.attempts == 1


# -- The overall deadline ----------------------------------------------------------


async def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    h = Harness(["ok"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(within=0.0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert h.attempts == 0


async def test_no_sleep_reaches_the_deadline() -> None:
    error = unavailable()
    h = Harness([error, "ok"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(within=0.05)  # the first backoff (0.05) would end exactly at it
    assert info.value is error
    assert (h.attempts, h.sleeps) == (1, [])


async def test_a_sleep_that_overshoots_gives_up_with_the_last_error() -> None:
    """A real sleep may wake late: past the deadline, no further attempt starts."""
    error = unavailable()
    h = Harness([error, "ok"])

    async def late_sleep(seconds: float) -> None:
        h.clock.advance(seconds + 1.0)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_with_retries(
            h.call,
            policy=STEADY,
            budget=None,
            deadline=h.clock() + 0.5,
            idempotent=True,
            clock=h.clock,
            sleep=late_sleep,
        )
    assert info.value is error
    assert h.attempts == 1


@PROPERTY
@given(
    policy=policies(),
    seed=seeds,
    within=st.floats(min_value=0.0, max_value=20.0),
    duration=st.floats(min_value=0.0, max_value=3.0),
    pushback=st.none() | st.integers(min_value=0, max_value=5000).map(str),
)
async def test_deadline_bounds_every_attempt_and_sleep(
    policy: RetryPolicy, seed: int, within: float, duration: float, pushback: str | None
) -> None:
    h = Harness([unavailable(pushback=pushback)], duration=duration)
    deadline = h.clock() + within
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(policy, within=within, rng=random.Random(seed))
    assert h.attempts <= policy.max_attempts
    assert all(start < deadline for start in h.call.started_at)
    assert all(woke < deadline for woke in h.clock.woke_at)
    assert len(h.sleeps) == max(0, h.attempts - 1)
    assert all(sleep >= 0 for sleep in h.sleeps)
    if h.attempts:
        assert info.value is h.call.raised[-1]
    else:
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancelling_the_call_during_a_backoff_cancels_it() -> None:
    started = asyncio.Event()

    async def attempt(a: Attempt) -> str:
        started.set()
        raise unavailable()

    task = asyncio.create_task(
        call_with_retries(
            attempt,
            policy=RetryPolicy(initial_backoff=30, max_backoff=30, jitter=False),
            budget=None,
            deadline=None,
            idempotent=True,
        )
    )
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- Pushback ----------------------------------------------------------------------


async def test_pushback_longer_than_the_backoff_wins() -> None:
    h = Harness([unavailable(pushback="700"), "ok"])
    assert await h.run() == "ok"
    assert h.sleeps == [0.7]


async def test_pushback_shorter_than_the_backoff_wins() -> None:
    h = Harness([unavailable(), unavailable(), unavailable(pushback="0"), "ok"])
    assert await h.run(STEADY.with_(initial_backoff=0.5, max_backoff=5)) == "ok"
    assert h.sleeps == pytest.approx([0.5, 1.0, 0.0])


async def test_after_a_pushback_the_backoff_starts_again_at_initial() -> None:
    h = Harness([unavailable(), unavailable(pushback="300"), unavailable(), unavailable(), "ok"])
    assert await h.run(STEADY.with_(max_attempts=5)) == "ok"
    assert h.sleeps == pytest.approx([0.05, 0.3, 0.05, 0.1])


@pytest.mark.parametrize("value", ["-1", "-500", "soon", "1.5", "", "99999999999"])
async def test_negative_or_malformed_pushback_stops_retries(value: str) -> None:
    error = unavailable(pushback=value)
    h = Harness([error, "ok"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run()
    assert info.value is error
    assert (h.attempts, h.retries) == (1, [])


async def test_pushback_past_the_deadline_gives_up() -> None:
    h = Harness([unavailable(pushback="5000"), "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(within=2.0)
    assert (h.attempts, h.sleeps) == (1, [])


async def test_pushback_does_not_make_a_code_retryable() -> None:
    error = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [("grpc-retry-pushback-ms", "10")]
    )
    h = Harness([error, "ok"])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run()
    assert h.attempts == 1


async def test_pushback_does_not_override_max_attempts() -> None:
    h = Harness([unavailable(pushback="10")])
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(STEADY.with_(max_attempts=2))
    assert h.attempts == 2


# -- Budget ------------------------------------------------------------------------


async def test_an_exhausted_budget_stops_retries() -> None:
    error = unavailable()
    h = Harness([error, "ok"])
    budget = RetryBudget(ratio=0, min_per_second=0, clock=h.clock)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(budget=budget)
    assert info.value is error
    assert h.attempts == 1


async def test_each_call_deposits_its_ratio_and_each_retry_spends_one() -> None:
    h = Harness([unavailable()])
    budget = RetryBudget(ratio=1.0, min_per_second=0, clock=h.clock)
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(budget=budget)  # on_call gave one token: one retry, then refused
    assert h.attempts == 2
    assert budget.available == 0


async def test_a_refused_retry_spends_no_token() -> None:
    # Not idempotent: the budget is never asked, so its token stays.
    h = Harness([unavailable()])
    budget = RetryBudget(ratio=1.0, min_per_second=0, clock=h.clock)
    with pytest.raises(grpc.aio.AioRpcError):
        await h.run(budget=budget, idempotent=False)
    assert budget.available == 1


async def test_a_storm_of_failures_is_cut_off_by_the_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=2, clock=clock)
    attempts = 0

    async def always_down(a: Attempt) -> str:
        nonlocal attempts
        attempts += 1
        clock.advance(0.005)
        raise unavailable()

    calls = 1000
    for _ in range(calls):
        with pytest.raises(grpc.aio.AioRpcError):
            await call_with_retries(
                always_down,
                policy=STEADY.with_(initial_backoff=0.001, max_backoff=0.001),
                budget=budget,
                deadline=None,
                idempotent=True,
                clock=clock,
                sleep=clock.sleep,
            )
    elapsed = clock() - 1000.0
    retries = attempts - calls
    unbudgeted = calls * (STEADY.max_attempts - 1)
    assert retries <= 0.1 * calls + 2 * (1 + elapsed) + 1
    assert retries >= 0.1 * calls  # the budget still lets its share through
    assert retries < unbudgeted / 10


# -- Excluded endpoints and the last error -----------------------------------------


async def test_failed_endpoints_accumulate_in_excluded() -> None:
    seen: list[frozenset[object]] = []
    endpoints = ["a", "b", None, "d"]
    errors = [unavailable(f"on {e}") for e in endpoints]

    async def attempt(a: Attempt) -> str:
        seen.append(a.excluded)
        raise AttemptFailed(errors[a.number - 1], endpoints[a.number - 1])

    h = Harness([])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.run(attempt=attempt)
    assert seen == [frozenset(), {"a"}, {"a", "b"}, {"a", "b"}]
    assert info.value is errors[-1]  # unwrapped: never the AttemptFailed


async def test_a_plain_rpc_error_adds_no_endpoint() -> None:
    h = Harness([unavailable(), unavailable(), "ok"])
    await h.run()
    assert {a.excluded for a in h.call.attempts} == {frozenset()}


async def test_attempt_failed_keeps_its_error_and_endpoint() -> None:
    error = unavailable()
    failed = AttemptFailed(error, "e1")
    assert (failed.error, failed.endpoint) == (error, "e1")
    assert AttemptFailed(error).endpoint is None


# -- on_retry and jitter -----------------------------------------------------------


async def test_on_retry_gets_retry_number_code_and_delay() -> None:
    h = Harness([unavailable(), unavailable(pushback="250"), unavailable(), "ok"])
    await h.run()
    assert h.retries == [(1, UNAVAILABLE, 0.05), (2, UNAVAILABLE, 0.25), (3, UNAVAILABLE, 0.05)]
    assert h.sleeps == [delay for _, _, delay in h.retries]


async def test_a_failing_on_retry_hook_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    call = ScriptedCall(clock, [unavailable(), "ok"])

    def broken(*args: object) -> None:
        raise RuntimeError("metrics down")

    with caplog.at_level(logging.ERROR, logger="client._retry"):
        result = await call_with_retries(
            call,
            policy=STEADY,
            budget=None,
            deadline=None,
            idempotent=True,
            clock=clock,
            sleep=clock.sleep,
            on_retry=broken,
        )
    assert result == "ok"
    assert "on_retry hook failed" in caplog.text


async def test_jittered_delays_come_from_the_given_rng() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0)
    h = Harness([unavailable(), unavailable(), unavailable(), "ok"])
    await h.run(policy, rng=random.Random(99))
    reference = random.Random(99)
    assert h.sleeps == [policy.backoff(n, reference) for n in (1, 2, 3)]
