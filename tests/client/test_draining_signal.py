"""The draining signal: its own exception, caught only where the lease is taken.

Real replicas (the ``replicas`` fixture: three in-process servers). A picker
that always takes the first endpoint not yet tried lets a test hand the call
an endpoint that was drained after it was listed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TypeVar

import pytest

from client import EndpointDrainingError, UnavailableError, UserClient
from client._endpoint import Lease
from client._picker import Candidate
from service.testing import InProcessServer, admin_token
from tests.client.conftest import static_target

C = TypeVar("C", bound=Candidate)


class FirstUntried:
    """Picks the first endpoint not in ``exclude``, available or not."""

    def pick(self, endpoints: Sequence[C], exclude: Collection[object] = ()) -> C | None:
        return next((e for e in endpoints if e not in exclude), None)


def first_client(replicas: list[InProcessServer]) -> UserClient:
    return UserClient(
        static_target(replicas), token=admin_token(), tracing=False, policy=FirstUntried()
    )


async def test_an_endpoint_drained_after_the_pick_is_retried_elsewhere(
    replicas: list[InProcessServer],
) -> None:
    async with first_client(replicas) as client:
        user = await client.create_user("Ada", "ada@example.com", 36)
        first = client.endpoints.endpoints[0]
        await first.drain(grace=0)  # still listed: the resolver never removed it
        calls_before = first.total_calls
        assert await client.get_user(user.id) == user
        assert first.total_calls == calls_before  # nothing was sent on it
        assert client.stats().hedges == 1  # GetUser is hedged: the next copy went at once


async def test_the_lease_refuses_with_its_own_exception(replicas: list[InProcessServer]) -> None:
    async with first_client(replicas) as client:
        endpoint = await client.endpoints.wait_pick(max_wait=5)
        await endpoint.drain(grace=0)
        with pytest.raises(EndpointDrainingError) as refused:
            endpoint.acquire()
        assert refused.value.address == endpoint.address
        assert str(refused.value) == f"{endpoint.address} is draining: it takes no new calls"
        assert not isinstance(refused.value, RuntimeError)
        assert endpoint.in_flight == 0


async def test_a_runtime_error_in_an_invoker_surfaces_unretried(
    replicas: list[InProcessServer],
) -> None:
    async with first_client(replicas) as client:

        async def buggy(lease: Lease, attempt_timeout: float | None) -> None:
            raise RuntimeError("bug in the invoker")

        with pytest.raises(RuntimeError, match="bug in the invoker"):
            await client._unary("GetUser", buggy, call_timeout=None)
        assert client.stats().retries == 0
        # The lease was given back all the same.
        assert all(e.in_flight == 0 for e in client.endpoints.endpoints)


async def test_a_chat_on_a_drained_endpoint_is_unavailable(
    replicas: list[InProcessServer],
) -> None:
    async with first_client(replicas) as client:
        endpoint = await client.endpoints.wait_pick(max_wait=5)
        await endpoint.drain(grace=0)
        with pytest.raises(UnavailableError) as failed:
            async with client.chat():
                pass
        assert failed.value.message == f"{endpoint.address} is draining: it takes no new calls"
        assert isinstance(failed.value.__cause__, EndpointDrainingError)
