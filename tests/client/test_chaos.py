"""Chaos with real replica processes: SIGKILL and SIGSTOP under bounded load, resume mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from client import NewUserSpec, UserClient
from service.testing import ReplicaProcess, admin_token
from tests.client.conftest import HOSTS

pytestmark = pytest.mark.slow

CALLS = 300
CONCURRENCY = 20


def target(procs: list[ReplicaProcess]) -> str:
    return "static:///" + ",".join(p.address for p in procs)


async def load(client: UserClient, user_id: str, on_call: Callable[[int], None]) -> list[str]:
    """CALLS GetUser calls at CONCURRENCY, bounded in time; the failures, as text."""
    gate = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            on_call(i)
            try:
                await client.get_user(user_id)
            except Exception as exc:
                failures.append(repr(exc))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(CALLS))), 40)
    return failures


async def test_sigkill_of_one_replica_fails_no_call(processes: list[ReplicaProcess]) -> None:
    victim = processes[0]
    async with UserClient(target(processes), token=admin_token(), tracing=False) as client:
        user = await client.create_user("Kill", "kill@example.com", 30)

        def maybe_kill(i: int) -> None:
            if i == CALLS // 4:
                victim.kill()

        failures = await load(client, user.id, maybe_kill)
        stats = client.stats()
    assert failures == []
    assert stats.retries + stats.hedges >= 1  # GetUser is hedged: a failed copy's next copy
    dead = next(e for e in stats.endpoints if e.address == victim.address)
    assert dead.failures >= 1
    assert dead.state in {"UNREACHABLE", "EJECTED"}


async def test_sigstop_of_one_replica_fails_no_idempotent_call(
    processes: list[ReplicaProcess],
) -> None:
    victim = processes[0]
    async with UserClient(target(processes), token=admin_token(), tracing=False) as client:
        user = await client.create_user("Stop", "stop@example.com", 30)
        try:

            def maybe_pause(i: int) -> None:
                if i == CALLS // 4:
                    victim.pause()

            failures = await load(client, user.id, maybe_pause)
        finally:
            victim.resume()
            victim.kill()
        stats = client.stats()
    assert failures == []
    # Copies stuck there lost to hedges on the others (or timed out and moved on).
    assert stats.hedges_won >= 1


async def test_list_users_resumes_after_a_replica_dies_mid_stream(store_url: str) -> None:
    procs = [ReplicaProcess(host, store_url=store_url) for host in HOSTS[:2]]
    async with contextlib.AsyncExitStack() as stack:
        for proc in procs:
            await stack.enter_async_context(proc)
        by_address = {p.address: p for p in procs}
        async with UserClient(target(procs), token=admin_token(), tracing=False) as client:
            specs = [NewUserSpec(f"L{i}", f"l{i}@example.com", 20) for i in range(1000)]
            expected = sorted(u.id for u in await client.batch_create_users(specs))
            received: list[str] = []
            async for user in client.list_users(page_size=1000):
                received.append(user.id)
                if len(received) == 20:
                    [busy] = [e for e in client.endpoints.endpoints if e.in_flight]
                    by_address[str(busy.address)].kill()
            stats = client.stats()
    assert received == expected  # No duplicate, no gap, in order.
    assert stats.retries == 1
    assert stats.failures == 0
