"""Health tells the truth, seen from the wire: real replicas, real files, a real PostgreSQL.

SERVING means that reads and writes work on the store the replica was started
with. Each test watches ``grpc.health.v1`` while the store breaks and heals
under a running replica, and checks what callers get meanwhile: UNAVAILABLE
(retryable elsewhere), never an acknowledged write that is later lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.health import SERVICE_NAME
from service.store._sqlite import SQLiteStore
from service.testing import admin_token, serve
from service.testing_postgres import LocalPostgres, local_postgres, why_no_local_postgres
from tests.aio_stubs import EOF
from tests.service.helpers import create_request
from tests.store._readonly import read_only

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ADMIN = (("authorization", f"Bearer {admin_token()}"),)


class _Watch:
    """One health Watch stream; ``next()`` waits (bounded) for the next status."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))

    async def next(self, within: float = 10.0) -> int:
        reply = await asyncio.wait_for(self._call.read(), within)
        assert reply is not EOF
        return int(reply.status)

    def cancel(self) -> None:
        self._call.cancel()


async def _code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _backup(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _delete(path: Path) -> None:
    path.unlink()


def _restore(backup: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):  # the deleted file's journal must not be replayed
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, path)


def _reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "reason", "")) for r in caplog.records if r.name == "meshdemo.health"]


async def test_a_deleted_file_turns_not_serving_refuses_creates_and_recovers_when_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshdemo.health")
    db = tmp_path / "users.db"
    async with serve(store_url=f"sqlite:///{db}", health_interval=0.2) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            watch = _Watch(channel)
            assert await watch.next() == SERVING
            kept = (await stub.CreateUser(create_request(1), metadata=ADMIN)).user
            _backup(db, tmp_path / "backup.db")
            _delete(db)
            # Refused at once, before any probe ran: nothing goes into the unlinked file.
            code = await _code_of(stub.CreateUser(create_request(2), metadata=ADMIN))
            assert code == grpc.StatusCode.UNAVAILABLE
            assert await watch.next() == NOT_SERVING
            code = await _code_of(stub.CreateUser(create_request(3), metadata=ADMIN))
            assert code == grpc.StatusCode.UNAVAILABLE
            # Another database put at the path is not adopted, and the log says why.
            _foreign_database(db)
            await _logged(caplog, "health still NOT_SERVING")
            _restore(tmp_path / "backup.db", db)
            assert await watch.next() == SERVING
            got = await stub.GetUser(user_pb2.GetUserRequest(id=kept.id), metadata=ADMIN)
            assert got.user == kept
            await stub.CreateUser(create_request(2), metadata=ADMIN)
            watch.cancel()
    reasons = _reasons(caplog)
    assert any("missing; this replica never creates" in r for r in reasons)
    assert any("journal" in r or "schema" in r for r in reasons)


def _foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE unrelated (x)")
    finally:
        conn.close()


async def _logged(caplog: pytest.LogCaptureFixture, start: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not any(r.getMessage().startswith(start) for r in caplog.records):
        assert time.monotonic() < deadline, f"no log line starting {start!r}"
        await asyncio.sleep(0.05)


async def test_a_replica_started_on_a_read_only_file_is_not_serving_until_writable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshdemo.health")
    db = tmp_path / "users.db"
    setup = SQLiteStore(str(db))
    await setup.open()
    await setup.close()
    with read_only(db) as writable:
        async with serve(store_url=f"sqlite:///{db}", health_interval=0.2) as server:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = user_pb2_grpc.UserServiceStub(channel)
                watch = _Watch(channel)
                assert await watch.next() == NOT_SERVING
                code = await _code_of(stub.CreateUser(create_request(1), metadata=ADMIN))
                assert code == grpc.StatusCode.UNAVAILABLE
                assert any("read-only" in r for r in _reasons(caplog))
                await asyncio.to_thread(writable)
                assert await watch.next() == SERVING
                await stub.CreateUser(create_request(1), metadata=ADMIN)
                watch.cancel()


@pytest.fixture(scope="module")
def own_server() -> Iterator[LocalPostgres]:
    reason = why_no_local_postgres()
    if reason:
        pytest.skip(f"cannot start a throwaway PostgreSQL: {reason}")
    with local_postgres() as server:
        server.start()
        yield server


@pytest.fixture
async def own_database(own_server: LocalPostgres) -> str:
    name = f"t_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(own_server.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return own_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.slow
async def test_a_postgres_outage_fails_calls_fast_and_the_replica_recovers_by_itself(
    own_server: LocalPostgres, own_database: str
) -> None:
    """The pool timeout is 5 s; calls during the outage get UNAVAILABLE in well under 1 s."""
    url = f"{own_database}?pool_timeout=5"
    async with serve(store_url=url, health_interval=0.2) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            watch = _Watch(channel)
            assert await watch.next() == SERVING
            kept = (await stub.CreateUser(create_request(1), metadata=ADMIN)).user
            get = user_pb2.GetUserRequest(id=kept.id)
            await asyncio.to_thread(own_server.stop, "fast")
            try:
                slowest = 0.0
                for n in range(30):
                    started = time.monotonic()
                    call = (
                        stub.GetUser(get, metadata=ADMIN, timeout=10)
                        if n % 2
                        else stub.CreateUser(create_request(n + 2), metadata=ADMIN, timeout=10)
                    )
                    assert await _code_of(call) == grpc.StatusCode.UNAVAILABLE
                    slowest = max(slowest, time.monotonic() - started)
                assert slowest < 1.0, f"a call took {slowest:.2f} s during the outage"
                assert await watch.next() == NOT_SERVING
            finally:
                await asyncio.to_thread(own_server.start)
            assert await watch.next(within=15) == SERVING
            assert (await stub.GetUser(get, metadata=ADMIN)).user == kept
            await stub.CreateUser(create_request(40), metadata=ADMIN)
            watch.cancel()
