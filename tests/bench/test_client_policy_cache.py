"""UserClient builds each method's retry policy once (a per-call cost the benchmark found)."""

from __future__ import annotations

from client import RetryPolicy, UserClient


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
