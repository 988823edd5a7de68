"""What only the PostgreSQL backend does: URLs, races between replicas, outages."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from service.domain import NewUser, User, new_user_id
from service.store import StoreUnavailable, open_store
from service.store._postgres import PostgresStore
from service.testing_postgres import LocalPostgres, local_postgres, why_no_local_postgres
from tests.store._users import collect, new_user
from tests.store.conftest import with_database

OTHER_REPLICAS_ID = new_user_id()


@pytest.fixture
def dead_port() -> int:
    """A loopback port where nothing listens (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_from_url_takes_its_pool_options_out_of_the_url() -> None:
    store = PostgresStore.from_url(
        "postgresql://u@127.0.0.1:5/db?pool_min=2&sslmode=disable&pool_max=4&pool_timeout=0.5"
    )
    assert store._conninfo == "postgresql://u@127.0.0.1:5/db?sslmode=disable"
    assert (store._pool_min, store._pool_max, store._pool_timeout) == (2, 4, 0.5)
    assert store._connect_kwargs["connect_timeout"] == 5


def test_connect_timeout_in_the_url_wins() -> None:
    store = PostgresStore.from_url("postgres://u@127.0.0.1:5/db?connect_timeout=2")
    assert store._connect_kwargs["connect_timeout"] == 2


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://u@127.0.0.1/db?pool_min=3&pool_max=2", "pool_min"),
        ("postgresql://u@127.0.0.1/db?pool_max=many", "bad PostgreSQL store URL"),
        ("postgresql://u@127.0.0.1/db?pool_timeout=0", "positive"),
        ("postgresql://u@127.0.0.1/db?no_such_libpq_option=1", "invalid PostgreSQL"),
        ("mysql://u@127.0.0.1/db", "not a PostgreSQL URL"),
    ],
)
def test_bad_urls_are_rejected(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostgresStore.from_url(url)


def test_passwords_never_show() -> None:
    url = "postgresql://app:s3cret@127.0.0.1:5/db?pool_max=x"
    with pytest.raises(ValueError, match="app:\\*\\*\\*@") as caught:
        PostgresStore.from_url(url)
    assert "s3cret" not in str(caught.value)
    store = PostgresStore.from_url("postgresql://app:s3cret@127.0.0.1:5/db")
    assert "s3cret" not in repr(store)
    assert "app:***@127.0.0.1:5" in repr(store)


async def test_an_unreachable_server_is_unavailable_within_a_bounded_time(
    dead_port: int,
) -> None:
    store = open_store(f"postgresql://postgres@127.0.0.1:{dead_port}/test?connect_timeout=2")
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.create_user(new_user(1))
    finally:
        await store.close()
    assert time.monotonic() - started < 5.0


@pytest.mark.postgres
@pytest.mark.parametrize("attempts", [3, 1])
async def test_a_request_id_committed_by_another_replica_mid_create(
    postgres_schema_url: str, attempts: int
) -> None:
    """The insert waits on the other replica's uncommitted row, then fails on the
    unique constraint: with attempts left the store re-reads and replays it."""
    store = PostgresStore(postgres_schema_url, create_attempts=attempts)
    await store.open()
    request = new_user(1, request_id="raced")
    try:
        with _uncommitted_row(postgres_schema_url, request) as commit:
            create = asyncio.create_task(store.create_user(request))
            await _wait_until_blocked(postgres_schema_url, create)
            commit()
        if attempts == 1:
            with pytest.raises(StoreUnavailable, match="colliding"):
                await create
        else:
            assert (await create).id == OTHER_REPLICAS_ID
    finally:
        await store.close()


@pytest.mark.postgres
async def test_an_exhausted_pool_makes_ping_unavailable_in_time(postgres_schema_url: str) -> None:
    store = PostgresStore(postgres_schema_url, pool_max=1, pool_timeout=5.0, ping_timeout=0.3)
    await store.open()
    try:
        with _uncommitted_row(postgres_schema_url, new_user(1, request_id="r")) as commit:
            # This create holds the only pooled connection while it waits on the row lock.
            create = asyncio.create_task(store.create_user(new_user(1, request_id="r")))
            await _wait_until_blocked(postgres_schema_url, create)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.ping()
            assert time.monotonic() - started < 1.5
            # Exhausted is not down: the probe reaches the server, so a call
            # that waits past suspect_after keeps waiting and then succeeds.
            waiting = asyncio.create_task(store.get_user("someone"))
            await asyncio.sleep(0.6)
            assert not waiting.done()
            commit()
        await create
        assert await waiting is None
        await store.ping()
    finally:
        await store.close()


@pytest.mark.postgres
async def test_calls_waiting_for_a_connection_fail_at_once_when_the_store_trips(
    postgres_schema_url: str,
) -> None:
    store = PostgresStore(postgres_schema_url, pool_max=1, pool_timeout=5.0, suspect_after=5.0)
    await store.open()
    try:
        await store.ping()
        assert store._pool is not None
        held = await store._pool.getconn()  # the only connection
        waiting = [asyncio.create_task(store.get_user("x")) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in waiting)
        started = time.monotonic()
        store._trip("found down")
        await asyncio.sleep(0)  # the waits have expired, their calls not yet resumed
        store._trip("found down again")
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert time.monotonic() - started < 0.5
        await held.close()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def own_server() -> Iterator[LocalPostgres]:
    reason = why_no_local_postgres()
    if reason:
        pytest.skip(f"cannot start a throwaway PostgreSQL: {reason}")
    with local_postgres() as server:
        yield server


@dataclass(frozen=True)
class Running:
    """The own server, started, and a fresh database on it."""

    server: LocalPostgres
    url: str


@pytest.fixture
async def running(own_server: LocalPostgres) -> AsyncIterator[Running]:
    await asyncio.to_thread(own_server.start)
    try:
        name = f"t_{secrets.token_hex(6)}"
        async with await psycopg.AsyncConnection.connect(own_server.url, autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield Running(own_server, with_database(own_server.url, name))
    finally:
        # Already stopped if the test failed in the middle of an outage.
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(own_server.stop, "immediate")


@pytest.mark.slow
async def test_an_outage_is_reported_and_recovered_from(running: Running) -> None:
    store = PostgresStore(running.url, pool_timeout=1.0, ping_timeout=1.0)
    await store.open()
    try:
        made = await store.create_user(new_user(1))
        await store.ping()
        await asyncio.to_thread(running.server.stop, "fast")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_user(made.id)
        await asyncio.to_thread(running.server.start)
        await _until_ping_answers(store, within=15.0)
        assert await store.get_user(made.id) == made
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_replica_started_during_an_outage_serves_once_the_server_is_back(
    running: Running,
) -> None:
    await asyncio.to_thread(running.server.stop, "fast")
    store = PostgresStore(running.url, pool_timeout=1.0, ping_timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await asyncio.to_thread(running.server.start)
        await _until_ping_answers(store, within=15.0)  # the migration runs now
        made = await store.create_user(new_user(1))
        assert await store.get_user(made.id) == made
    finally:
        await store.close()


@pytest.mark.slow
async def test_an_outage_fails_calls_fast_and_is_recovered_from_without_a_restart(
    running: Running,
) -> None:
    """The pool timeout is 5 s; once the server is found gone, calls fail in well under 1 s."""
    store = PostgresStore(running.url, pool_timeout=5.0, ping_timeout=1.0)
    await store.open()
    try:
        made = await store.create_user(new_user(1))
        await asyncio.to_thread(running.server.stop, "fast")
        # The first calls find no live connection: a probe finds the server
        # gone and every one of them, waiting in the pool, fails at once.
        started = time.monotonic()
        first = await asyncio.gather(
            *(store.get_user(made.id) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(outcome, StoreUnavailable) for outcome in first)
        assert time.monotonic() - started < 1.0
        with pytest.raises(StoreUnavailable, match="down"):
            await store.ping()
        # Known down: every kind of call fails without waiting for the pool.
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get_user(made.id),
            lambda: store.create_user(new_user(2)),
            lambda: store.create_users([new_user(3), new_user(4)]),
            lambda: collect(store.iter_users(None, 10)),
        ]
        for call in calls * 5:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="failing fast"):
                await call()
            assert time.monotonic() - started < 1.0
        await asyncio.to_thread(running.server.start)
        await _until_ping_answers(store, within=15.0)
        assert await store.get_user(made.id) == made
        await store.create_user(new_user(2))
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_query_that_loses_its_server_trips_the_circuit_at_once(running: Running) -> None:
    store = PostgresStore(running.url, pool_timeout=5.0, ping_timeout=1.0)
    await store.open()
    try:
        await store.ping()
        # The server's shutdown ends this statement with SQLSTATE 57P01.
        sleeping = asyncio.create_task(store._fetch("SELECT pg_sleep(10)", ()))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(running.server.stop, "fast")
        with pytest.raises(StoreUnavailable):
            await sleeping
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="failing fast"):
            await store.get_user("someone")
        assert time.monotonic() - started < 0.1  # no pool, no probe: known down
        await asyncio.to_thread(running.server.start)
        await _until_ping_answers(store, within=15.0)
        assert await store.get_user("someone") is None
    finally:
        await store.close()


async def _until_ping_answers(store: PostgresStore, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await store.ping()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


@contextlib.contextmanager
def _uncommitted_row(url: str, new: NewUser) -> Iterator[Callable[[], object]]:
    """Another replica's transaction that inserted ``new``; call the result to commit it."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO users (id, name, email, email_key, age, roles, created_at,"
            " request_id, request_fingerprint) VALUES (%s, %s, %s, %s, %s, %s, now(), %s, %s)",
            (
                OTHER_REPLICAS_ID,
                new.name,
                new.email,
                new.email_key,
                new.age,
                list(new.roles),
                new.request_id,
                new.fingerprint(),
            ),
        )
        yield conn.commit


async def _wait_until_blocked(url: str, task: asyncio.Task[User]) -> None:
    """Wait (bounded) until a session of the database waits on a lock."""
    deadline = time.monotonic() + 5.0
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as watcher:
        while time.monotonic() < deadline and not task.done():
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the store never waited on the other replica's row")


@pytest.mark.postgres
async def test_pool_options_in_the_url_reach_the_pool_not_libpq(postgres_schema_url: str) -> None:
    store = open_store(f"{postgres_schema_url}&pool_min=0&pool_max=2&pool_timeout=1.5")
    await store.open()
    try:
        await store.ping()
        made = await store.create_user(new_user(1))
        assert await store.get_user(made.id) == made
    finally:
        await store.close()
