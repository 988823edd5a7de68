"""What only the SQLite backend does: URLs, the shared file, locks and broken files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store import StoreUnavailable, open_store
from service.store._sqlite import SQLiteStore
from tests.store._users import collect, new_user


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.db"


@pytest.fixture
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the same file, playing another process."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=0.05)
    try:
        yield conn
    finally:
        conn.close()


async def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data.db")
    assert isinstance(store, SQLiteStore)
    await store.open()
    await store.close()
    assert await asyncio.to_thread((tmp_path / "data.db").is_file)


async def test_absolute_url_and_busy_timeout_option(db_path: Path) -> None:
    store = SQLiteStore.from_url(f"sqlite:///{db_path}?busy_timeout_ms=250")
    await store.open()
    try:
        await store.create_user(new_user(1))
    finally:
        await store.close()
    assert await asyncio.to_thread(db_path.is_file)
    assert db_path.is_absolute()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/users.db",
        "sqlite:users.db",
        "sqlite:///users.db?journal=delete",
        "sqlite:///users.db?busy_timeout_ms",
        "sqlite:///:memory:",
        "sqlite:///",
        "mysql:///users.db",
    ],
)
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError, match=r"SQLite|sqlite|memory|file path|bad"):
        SQLiteStore.from_url(url)


def test_bad_options_are_rejected(db_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SQLiteStore(str(db_path), busy_timeout_ms=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        SQLiteStore(str(db_path), chunk_size=0)


async def test_the_file_uses_the_wal_journal(db_path: Path) -> None:
    store = SQLiteStore(str(db_path))
    await store.open()
    await store.close()
    assert _journal_mode(db_path) == "wal"


async def test_a_missing_directory_is_unavailable_until_it_exists(tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    store = SQLiteStore(str(folder / "users.db"))
    try:
        with pytest.raises(StoreUnavailable, match="unable to open"):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_user("x")
        folder.mkdir()
        await store.ping()  # every call retries the open
        made = await store.create_user(new_user(1))
        assert await store.get_user(made.id) == made
    finally:
        await store.close()


@pytest.fixture
def not_a_database(db_path: Path) -> Path:
    db_path.write_bytes(b"this is not a database at all, just some text" * 100)
    return db_path


async def test_a_file_that_is_not_a_database_is_unavailable(not_a_database: Path) -> None:
    store = SQLiteStore(str(not_a_database))
    try:
        with pytest.raises(StoreUnavailable, match="not a database"):
            await store.open()
    finally:
        await store.close()


async def test_a_write_lock_held_elsewhere_is_unavailable_then_recovers(
    db_path: Path, raw: sqlite3.Connection
) -> None:
    store = SQLiteStore(str(db_path), busy_timeout_ms=200)
    await store.open()
    try:
        made = await store.create_user(new_user(1))
        raw.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_user(new_user(2))
        assert time.monotonic() - started < 2.0
        assert await store.get_user(made.id) == made  # WAL: reads go on meanwhile
        await store.ping()
        raw.execute("ROLLBACK")
        await store.create_user(new_user(2))
        assert raw.execute("SELECT count(*) FROM users").fetchone() == (2,)
    finally:
        await store.close()


async def test_a_write_cancelled_while_waiting_for_the_lock_leaves_no_lock(
    db_path: Path, raw: sqlite3.Connection
) -> None:
    store = SQLiteStore(str(db_path), busy_timeout_ms=3000)
    await store.open()
    try:
        raw.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.create_user(new_user(1)))
        await asyncio.sleep(0.1)  # the store's BEGIN now waits in SQLite's busy handler
        task.cancel()
        await asyncio.sleep(0.05)
        raw.execute("ROLLBACK")  # the store's BEGIN gets the lock ...
        with pytest.raises(asyncio.CancelledError):
            await task
        # ... and the ROLLBACK queued behind it must give it back at once.
        assert await _can_take_write_lock(raw, within=1.0)
        raw.execute("ROLLBACK")
        await store.create_user(new_user(2))
        assert raw.execute("SELECT count(*) FROM users").fetchone() == (1,)
    finally:
        await store.close()


async def _can_take_write_lock(conn: sqlite3.Connection, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            await asyncio.sleep(0.02)
        else:
            return True
    return False


async def test_a_paused_stream_holds_no_snapshot(db_path: Path, raw: sqlite3.Connection) -> None:
    store = SQLiteStore(str(db_path), chunk_size=2)
    await store.open()
    try:
        await store.create_users([new_user(n) for n in range(5)])
        stream = store.iter_users(None, 5)
        await anext(stream)
        # A reader holding a snapshot would make the checkpoint report busy=1.
        assert raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
        assert len(await collect(stream)) == 4
    finally:
        await store.close()


async def test_calls_in_flight_when_the_store_closes_are_unavailable(
    db_path: Path, raw: sqlite3.Connection
) -> None:
    store = SQLiteStore(str(db_path), busy_timeout_ms=3000)
    await store.open()
    raw.execute("BEGIN IMMEDIATE")
    waiting_for_file = asyncio.create_task(store.create_user(new_user(1)))
    waiting_for_writer = asyncio.create_task(store.create_user(new_user(2)))
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.05)
    raw.execute("ROLLBACK")
    outcomes = await asyncio.gather(
        waiting_for_file, waiting_for_writer, closing, return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [StoreUnavailable, StoreUnavailable, type(None)]
    assert raw.execute("SELECT count(*) FROM users").fetchone() == (0,)


async def test_switching_a_shared_file_to_wal_waits_for_other_readers(
    db_path: Path, raw: sqlite3.Connection
) -> None:
    # A connection reading a fresh file in rollback-journal mode blocks the
    # switch to WAL; SQLite says "locked" at once, so the store retries.
    raw.execute("CREATE TABLE other (x)")
    raw.execute("BEGIN")
    raw.execute("SELECT * FROM other").fetchall()
    store = SQLiteStore(str(db_path), busy_timeout_ms=300)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.open()
        assert 0.25 < time.monotonic() - started < 2.0
        opening = asyncio.create_task(store.ping())  # retries the open ...
        await asyncio.sleep(0.1)
        raw.execute("COMMIT")  # ... and gets the file once the reader is done
        await opening
    finally:
        await store.close()
    assert _journal_mode(db_path) == "wal"


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()
