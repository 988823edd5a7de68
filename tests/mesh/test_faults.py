"""Faults on the local mesh, each bounded in time: what the service and client survive.

A batch cut off by SIGKILL at different points of its transaction, every
replica killed at once, a replica that stalls. Real processes, the mesh's
DNS, a real client; the assertions are what users care about.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from bench.reliability._scenarios import RECOVERY_LIMIT_S, all_replicas_killed, stalled_replica
from client import NewUserSpec, UserClient
from mesh._supervisor import Mesh
from tests.mesh.conftest import mesh_client, seed
from tests.mesh.drills import all_users

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BATCH = 1000


def _in_flight_on(client: UserClient) -> str | None:
    """The address of an endpoint with a call in flight, if any."""
    return next((e.address for e in client.stats().endpoints if e.in_flight > 0), None)


@pytest.mark.parametrize("offset_ms", [0, 25, 60, 120])
async def test_a_batch_cut_off_by_sigkill_is_committed_exactly_once(
    mesh: Mesh, offset_ms: int
) -> None:
    tag = f"batch-{uuid.uuid4().hex[:8]}-"
    specs = [NewUserSpec(f"B {n}", f"{tag}{n}@example.com", 30) for n in range(BATCH)]
    async with mesh_client(mesh) as client:
        await seed(client, 1)  # connections warm, so the batch is the only call in flight
        batch = asyncio.create_task(client.batch_create_users(specs, timeout=30))
        address = None
        async with asyncio.timeout(10):
            while address is None and not batch.done():
                address = _in_flight_on(client)
                await asyncio.sleep(0.001)
        victim = next(r for r in mesh.replicas if r.address == address)
        await asyncio.sleep(offset_ms / 1000)
        if victim.pid is not None:
            mesh.kill(victim.name)
        users = await batch  # the client's retry, on another replica when it was cut off
        assert len(users) == BATCH
        emails = list((await all_users(client, tag)).values())
        assert sorted(emails) == sorted(spec.email for spec in specs)  # all, each once
        assert {u.email for u in users} == set(emails)


async def test_every_replica_killed_at_once_and_the_client_recovers_by_itself(
    tmp_path: Path,
) -> None:
    # No new client, no restart of it: the same client's calls succeed again by themselves.
    outcome = await all_replicas_killed(tmp_path / "mesh", rounds=1)
    assert (outcome.lost, outcome.duplicates, outcome.problems) == (0, 0, [])
    assert set(outcome.failures) <= {"UNAVAILABLE"}
    assert outcome.recovery_s and max(outcome.recovery_s) < RECOVERY_LIMIT_S


async def test_a_stalled_replica_fails_no_call(tmp_path: Path) -> None:
    outcome = await stalled_replica(tmp_path / "mesh", rounds=1)
    assert outcome.failures == {}
    assert (outcome.lost, outcome.duplicates, outcome.problems) == (0, 0, [])
    assert outcome.recovery_s and max(outcome.recovery_s) < RECOVERY_LIMIT_S
