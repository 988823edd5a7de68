"""call_with_retries around real grpc.aio calls to a real server on loopback.

The clock is real here (the server's failures are real), but every wait is
short and every call has a deadline; sleeps are recorded to check their length.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from client._errors import UnavailableError, from_rpc_error
from client._retry import Attempt, AttemptFailed, RetryBudget, RetryPolicy, call_with_retries
from meshdemo.v1 import user_pb2
from service import errors as service_errors

from .server import Behaviour, Running, abort_rich, running, sleep_first

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, jitter=False)


def failing_times(n: int, error: service_errors.ServiceError) -> Behaviour:
    """Abort the first ``n`` calls with ``error``; answer after that."""

    async def behaviour(context: grpc.aio.ServicerContext[object, object], count: int) -> None:
        if count <= n:
            await abort_rich(context, error.to_status_proto(), error.trailing_metadata)

    return behaviour


class Recorder:
    """A sleep that records its argument and yields without waiting long."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


async def get_with_retries(
    server: Running,
    user_id: str,
    policy: RetryPolicy = FAST,
    *,
    idempotent: bool = True,
    sleep: Recorder | None = None,
    budget: RetryBudget | None = None,
) -> user_pb2.GetUserResponse:
    async def attempt(a: Attempt) -> user_pb2.GetUserResponse:
        try:
            return await server.get_user(user_id, within=a.timeout)
        except grpc.aio.AioRpcError as err:
            raise AttemptFailed(err, "the-only-endpoint") from err

    return await call_with_retries(
        attempt,
        policy=policy,
        budget=budget,
        deadline=time.monotonic() + 5.0,
        idempotent=idempotent,
        sleep=sleep or Recorder(),
    )


async def test_unavailable_twice_then_success() -> None:
    async with running({"u1": failing_times(2, service_errors.Unavailable("warming up"))}) as s:
        response = await get_with_retries(s, "u1")
    assert response.user.id == "u1"
    assert s.service.calls["u1"] == 3


async def test_giving_up_raises_the_real_error_which_maps() -> None:
    async with running({"u1": failing_times(99, service_errors.Unavailable("down"))}) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await get_with_retries(s, "u1")
    assert s.service.calls["u1"] == FAST.max_attempts
    mapped = from_rpc_error(info.value)
    assert isinstance(mapped, UnavailableError)
    assert mapped.message == "down"


async def test_a_non_idempotent_call_reaches_the_server_once() -> None:
    async with running({"u1": failing_times(1, service_errors.Unavailable("down"))}) as s:
        with pytest.raises(grpc.aio.AioRpcError):
            await get_with_retries(s, "u1", idempotent=False)
    assert s.service.calls["u1"] == 1


async def test_a_real_per_attempt_timeout_is_retried() -> None:
    async with running({"slow": sleep_first(3.0)}) as s:
        response = await get_with_retries(s, "slow", FAST.with_(per_attempt_timeout=0.3))
    assert response.user.id == "slow"
    assert s.service.calls["slow"] == 2


async def test_real_pushback_sets_the_delay() -> None:
    sleep = Recorder()
    error = service_errors.Unavailable("draining", retry_after_ms=40)
    async with running({"u1": failing_times(1, error)}) as s:
        await get_with_retries(s, "u1", sleep=sleep)
    assert sleep.delays == [0.04]


async def test_real_negative_pushback_stops_retries() -> None:
    error = service_errors.ServiceError(
        "go away", trailing_metadata=[("grpc-retry-pushback-ms", "-1")]
    )
    error.code = grpc.StatusCode.UNAVAILABLE
    async with running({"u1": failing_times(1, error)}) as s:
        with pytest.raises(grpc.aio.AioRpcError):
            await get_with_retries(s, "u1")
    assert s.service.calls["u1"] == 1


async def test_an_empty_budget_means_one_call_on_the_wire() -> None:
    async with running({"u1": failing_times(1, service_errors.Unavailable("down"))}) as s:
        with pytest.raises(grpc.aio.AioRpcError):
            await get_with_retries(s, "u1", budget=RetryBudget(ratio=0, min_per_second=0))
    assert s.service.calls["u1"] == 1
