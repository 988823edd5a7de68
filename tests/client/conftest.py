"""Fixtures: three real replicas on 127.0.0.2-4 sharing one SQLite store, in process or as
processes (``processes``: for signals, SIGKILL and SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from client import UserClient
from service.testing import InProcessServer, ReplicaProcess, admin_token, serve

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mesh.db'}"


@contextlib.asynccontextmanager
async def serve_many(
    hosts: Sequence[str], store_url: str, **overrides: Any
) -> AsyncIterator[list[InProcessServer]]:
    """Real replicas on ``hosts``, sharing ``store_url``, stopped when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(serve(host, store_url=store_url, **overrides))
            for host in hosts
        ]
        yield servers


def static_target(servers: Sequence[InProcessServer]) -> str:
    return "static:///" + ",".join(s.address for s in servers)


@pytest.fixture
async def replicas(store_url: str) -> AsyncIterator[list[InProcessServer]]:
    async with serve_many(HOSTS, store_url) as servers:
        yield servers


@pytest.fixture
async def client(replicas: list[InProcessServer]) -> AsyncIterator[UserClient]:
    async with UserClient(static_target(replicas), token=admin_token(), tracing=False) as c:
        yield c


@pytest.fixture
async def processes(store_url: str) -> AsyncIterator[list[ReplicaProcess]]:
    """Replica processes on HOSTS; never left running or stopped."""
    procs = [ReplicaProcess(host, store_url=store_url) for host in HOSTS]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield procs
    finally:
        for proc in procs:
            proc.resume()  # never leave a stopped process behind
            await proc.close()
