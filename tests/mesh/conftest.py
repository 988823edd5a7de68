"""Fixtures of the mesh tests: a real local mesh (replica processes, DNS, receiver) per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.reliability._scenarios import drill_client
from bench.reliability._scenarios import mesh_config as scenario_mesh_config
from client import NewUserSpec, UserClient
from mesh._config import MeshConfig
from mesh._receiver import TraceReceiver
from mesh._spans import SpanStore
from mesh._supervisor import Mesh


def mesh_config(tmp_path: Path, **overrides: Any) -> MeshConfig:
    """A mesh in ``tmp_path`` on a free port, quick to drain, without the metrics scrape."""
    return scenario_mesh_config(tmp_path / "mesh", **overrides)


@contextlib.asynccontextmanager
async def running_mesh(config: MeshConfig) -> AsyncIterator[Mesh]:
    async with Mesh(config) as mesh:
        yield mesh


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[TraceReceiver]:
    """A trace receiver keeping spans in ``tmp_path/state``, stopped after the test."""
    receiver = TraceReceiver(SpanStore(tmp_path / "state"))
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(mesh_config(tmp_path)) as running:
        yield running


#: A client of the mesh's DNS name with an admin token, tracing off.
mesh_client = drill_client


async def seed(client: UserClient, count: int = 20) -> list[str]:
    """Create ``count`` users in one batch; their ids."""
    specs = [NewUserSpec(f"Seed {n}", f"seed-{n}@example.com", 20 + n) for n in range(count)]
    return [user.id for user in await client.batch_create_users(specs)]


# The PostgreSQL drills use the store suite's throwaway database on the shared server.
from tests.store.conftest import postgres_database, postgres_schema_url  # noqa: E402

__all__ = ["postgres_database", "postgres_schema_url"]
