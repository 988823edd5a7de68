"""Failover drills on the local mesh: what the cluster does to the service, under load.

Each drill runs a real mesh (replica processes on 127.0.0.x, the mesh's DNS
server, its restarts) with a real client resolving the mesh's DNS name, and
asserts what users care about: no failed idempotent call, no acknowledged
write lost, no duplicate from a retried create, no orphan process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import UserClient
from mesh._replica import Replica, ReplicaState
from mesh._supervisor import Mesh
from tests.mesh.conftest import mesh_client, mesh_config, running_mesh, seed
from tests.mesh.drills import Traffic, check_writes, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _in_dns(mesh: Mesh, name: str) -> bool:
    return mesh.replica(name).host in mesh.status()["records"]


async def test_sigkill_under_load_fails_no_call_and_loses_no_write(mesh: Mesh) -> None:
    async with mesh_client(mesh) as client:
        traffic = Traffic(client, await seed(client), rps=60, duration=8)
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(2.5)
        victim = mesh.replica("users-1")
        old_pid, restarts = victim.pid, victim.restarts
        mesh.kill("users-1")
        out_of_dns = await eventually(lambda: not _in_dns(mesh, "users-1"), 1.0, "out of DNS")
        await eventually(lambda: victim.ready and victim.pid != old_pid, 5.0, "back SERVING")
        result = await run
        assert result.failures == []
        assert await check_writes(client, result, traffic.tag) == []
    assert victim.restarts == restarts + 1
    assert out_of_dns < 1.0


async def test_rolling_graceful_restart_of_every_replica(mesh: Mesh) -> None:
    async with mesh_client(mesh) as client:
        traffic = Traffic(client, await seed(client), rps=50, duration=30)
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(1.0)
        for replica in mesh.replicas:
            restarts = replica.restarts
            mesh.kill(replica.name, graceful=True)
            # Out of DNS at once (terminating), as an EndpointSlice drops a terminating pod.
            assert not _in_dns(mesh, replica.name)

            def restarted(r: Replica = replica, n: int = restarts) -> bool:
                return r.ready and r.restarts == n + 1

            await eventually(restarted, 15.0, replica.name)
        traffic.stop()
        result = await run
        assert result.failures == []
        assert await check_writes(client, result, traffic.tag) == []


async def test_scale_up_gets_traffic_within_one_ttl_and_down_fails_nothing(mesh: Mesh) -> None:
    ttl = mesh.config.dns_ttl
    async with mesh_client(mesh) as client:
        traffic = Traffic(client, await seed(client), rps=80, duration=25)
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(1.0)
        await mesh.scale(5)
        new = [mesh.replica("users-3"), mesh.replica("users-4")]
        await eventually(lambda: all(r.ready for r in new), 10.0, "new replicas SERVING")
        waits = await asyncio.gather(*(_first_call(client, r.address) for r in new))
        assert max(waits) <= ttl + 0.75, waits
        await mesh.scale(2)
        await eventually(lambda: len(mesh.replicas) == 2, 15.0, "scaled down to 2")
        assert [r.name for r in mesh.replicas] == ["users-0", "users-1"]
        await asyncio.sleep(1.5)
        traffic.stop()
        result = await run
        assert result.failures == []
        assert await check_writes(client, result, traffic.tag) == []


def _serving_endpoints(client: UserClient) -> int:
    return sum(e.state == "SERVING" for e in client.stats().endpoints)


async def _first_call(client: UserClient, address: str) -> float:
    """Seconds until the client's stats show a call served by ``address`` (from now)."""

    def served() -> bool:
        stats = client.stats()
        return any(e.address == address and e.total_calls > 0 for e in stats.endpoints)

    return await eventually(served, 10.0, f"traffic to {address}")


# --- a replica whose store goes away, and a store that goes away for everyone ---------------


class _Proxy:
    """A TCP forwarder on 127.0.0.1 to ``host:port``; closing it cuts every connection."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        self._writers -= {writer, up_writer}


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@pytest.fixture
async def proxy(postgres_database: str) -> AsyncIterator[_Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_database)
    forwarder = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await forwarder.start()
    yield forwarder
    await forwarder.close()


@pytest.mark.postgres
async def test_a_replica_that_goes_not_serving_leaves_dns_and_comes_back(
    tmp_path: Path, postgres_schema_url: str, proxy: _Proxy
) -> None:
    proxied = postgres_schema_url.replace(
        postgres_schema_url.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}", 1
    )
    config = mesh_config(
        tmp_path, store=postgres_schema_url, replica_env={"users-1": {"MESH_STORE": proxied}}
    )
    async with running_mesh(config) as mesh, mesh_client(mesh) as client:
        traffic = Traffic(client, await seed(client), rps=50, duration=20)
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(1.5)
        await proxy.close()  # users-1 alone loses its database
        await eventually(
            lambda: mesh.replica("users-1").state is ReplicaState.NOT_SERVING, 6.0, "NOT_SERVING"
        )
        assert not _in_dns(mesh, "users-1")
        assert mesh.replica("users-1").pid is not None  # still running, only not ready
        await asyncio.sleep(2.0)
        await proxy.start()  # same port: the database is back for users-1
        await eventually(lambda: _in_dns(mesh, "users-1"), 8.0, "back in DNS")
        await asyncio.sleep(1.5)
        traffic.stop()
        result = await run
        assert result.failures == []
        assert await check_writes(client, result, traffic.tag) == []
        assert mesh.replica("users-1").restarts == 0


@pytest.mark.postgres
async def test_store_outage_empties_dns_and_recovery_needs_no_restart(tmp_path: Path) -> None:
    from service.testing_postgres import local_postgres, why_no_local_postgres

    if reason := why_no_local_postgres():
        pytest.skip(reason)
    with local_postgres() as server:
        server.start()
        config = mesh_config(tmp_path, store=server.url)
        async with running_mesh(config) as mesh, mesh_client(mesh) as client:
            before = Traffic(client, await seed(client), rps=40, duration=3)
            written = await before.run()
            assert written.failures == []
            await asyncio.to_thread(server.stop)
            await eventually(lambda: not mesh.status()["records"], 8.0, "DNS empty")
            await asyncio.to_thread(server.start)
            await mesh.wait_serving(timeout=15.0)
            # The client had nothing to call; it finds the replicas again within a TTL or so.
            await eventually(lambda: _serving_endpoints(client) == 3, 8.0, "client sees replicas")
            after = Traffic(client, list(written.acknowledged), rps=40, duration=3)
            result = await after.run()
            assert result.failures == []
            assert await check_writes(client, written, before.tag) == []
            assert all(r.restarts == 0 for r in mesh.replicas)
