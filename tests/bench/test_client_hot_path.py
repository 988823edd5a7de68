"""Per-call costs the client benchmark found: the retry policy built once, a cheap trace filter."""

from __future__ import annotations

import grpc
import pytest

from client import RetryPolicy, UserClient
from client._interceptors import _not_health


async def test_each_method_gets_its_own_attempt_timeout_from_a_cached_policy() -> None:
    client = UserClient(
        "static:///127.0.0.2:1",
        tracing=False,
        attempt_timeouts={"GetUser": 0.3, "CreateUser": 1.5},
    )
    try:
        get = client._policy("GetUser")
        assert get.per_attempt_timeout == 0.3
        assert client._policy("CreateUser").per_attempt_timeout == 1.5
        assert client._policy("ListUsers").per_attempt_timeout is None
        assert client._policy("GetUser") is get  # Built once, not per call.
    finally:
        await client.close()


async def test_a_base_policy_with_its_own_attempt_timeout_applies_to_every_method() -> None:
    base = RetryPolicy(max_attempts=2, per_attempt_timeout=0.7)
    client = UserClient("static:///127.0.0.2:1", tracing=False, retry=base)
    try:
        assert client._policy("GetUser") is base
        assert client._policy("CreateUser") is base
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "traced"),
    [
        ("/meshdemo.v1.UserService/GetUser", True),
        (b"/meshdemo.v1.UserService/Chat", True),
        ("/grpc.health.v1.Health/Watch", False),
        (b"/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.HealthExtra/Check", True),
    ],
)
def test_every_call_but_health_checks_is_traced(method: str | bytes, traced: bool) -> None:
    details = grpc.aio.ClientCallDetails(method, 1.0, None, None, None)  # type: ignore[arg-type]
    assert _not_health(details) is traced
