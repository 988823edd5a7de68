"""Fixtures of the mesh tests: a real local mesh (replica processes, DNS, receiver) per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client import NewUserSpec, UserClient, mint_token
from mesh._config import MeshConfig
from mesh._receiver import TraceReceiver
from mesh._spans import SpanStore
from mesh._supervisor import Mesh


def mesh_config(tmp_path: Path, **overrides: Any) -> MeshConfig:
    """A mesh in ``tmp_path`` on a free port, quick to drain, without the metrics scrape."""
    settings: dict[str, Any] = {
        "state_dir": tmp_path / "mesh",
        "replicas": 3,
        "port": 0,
        "drain_delay": 1.5,
        "shutdown_grace": 2.0,
        "scrape_interval": 0,
    }
    settings.update(overrides)
    return MeshConfig(**settings)


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


def mesh_client(mesh: Mesh, **options: Any) -> UserClient:
    """A client of the mesh's DNS name with an admin token, tracing off."""
    token = mint_token(mesh.secret, "drill", ["admin"], 600)
    return UserClient(mesh.target, token=token, tracing=False, **options)


async def seed(client: UserClient, count: int = 20) -> list[str]:
    """Create ``count`` users in one batch; their ids."""
    specs = [NewUserSpec(f"Seed {n}", f"seed-{n}@example.com", 20 + n) for n in range(count)]
    return [user.id for user in await client.batch_create_users(specs)]


# The PostgreSQL drills use the store suite's throwaway database on the shared server.
from tests.store.conftest import postgres_database, postgres_schema_url  # noqa: E402

__all__ = ["postgres_database", "postgres_schema_url"]
