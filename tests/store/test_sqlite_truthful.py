"""SQLite health tells the truth: the file the store opened, deleted, replaced, read-only.

Real files, real SQLite; "read-only" is real too (``chattr +i`` as root,
``chmod`` otherwise: see ``_readonly.py``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiosqlite
import pytest

from service.domain import utc_now
from service.store import StoreUnavailable
from service.store._sqlite import SQLiteStore
from tests.store._readonly import read_only
from tests.store._users import new_user


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(db_path), busy_timeout_ms=500)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _backup(source: Path, target: Path) -> None:
    """A consistent copy (WAL included), as ``sqlite3 users.db .backup`` makes."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _remove_journal(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _delete(path: Path) -> None:
    path.unlink()


def _exists(path: Path) -> bool:
    return path.exists()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
    finally:
        conn.close()


async def test_a_deleted_file_refuses_writes_and_is_adopted_again_once_restored(
    store: SQLiteStore, db_path: Path, tmp_path: Path
) -> None:
    kept = await store.create_user(new_user(1))
    _backup(db_path, tmp_path / "backup.db")
    _delete(db_path)
    with pytest.raises(StoreUnavailable, match="deleted"):
        await store.create_user(new_user(2))
    with pytest.raises(StoreUnavailable, match="missing"):
        await store.create_users([new_user(3), new_user(4)])
    with pytest.raises(StoreUnavailable, match="missing; this replica never creates"):
        await store.ping()
    assert not _exists(db_path)  # no new, empty database appeared
    _remove_journal(db_path)
    shutil.copyfile(tmp_path / "backup.db", db_path)
    await store.ping()  # reopened by itself
    assert await store.get_user(kept.id) == kept
    await store.create_user(new_user(2))
    assert _count(db_path) == 2


async def test_a_file_deleted_in_the_middle_of_a_write_is_not_acknowledged(
    db_path: Path,
) -> None:
    armed = False

    def deleting_clock() -> datetime:  # runs inside the write transaction
        if armed:
            _delete(db_path)
        return utc_now()

    store = SQLiteStore(str(db_path), clock=deleting_clock)
    try:
        await store.open()
        armed = True
        with pytest.raises(StoreUnavailable, match="deleted"):
            await store.create_user(new_user(1))
        armed = False
        with pytest.raises(StoreUnavailable, match="missing"):
            await store.ping()
    finally:
        await store.close()


async def test_a_replaced_file_refuses_writes_then_the_new_file_is_adopted(
    store: SQLiteStore, db_path: Path, tmp_path: Path
) -> None:
    first = await store.create_user(new_user(1))
    other_path = tmp_path / "other.db"
    other = SQLiteStore(str(other_path))
    await other.open()
    theirs = await other.create_user(new_user(9))
    await other.close()  # checkpoints and removes its journal
    os.replace(other_path, db_path)
    with pytest.raises(StoreUnavailable, match="replaced"):
        await store.create_user(new_user(2))
    # The previous file's journal is still next to the new file: never replayed into it.
    with pytest.raises(StoreUnavailable, match="previous file's journal"):
        await store.ping()
    _remove_journal(db_path)
    await store.ping()
    assert await store.get_user(theirs.id) == theirs
    assert await store.get_user(first.id) is None
    await store.create_user(new_user(2))
    assert _count(db_path) == 2


async def test_a_second_replica_joins_a_file_another_replica_adopted(
    db_path: Path, tmp_path: Path
) -> None:
    one, two = SQLiteStore(str(db_path)), SQLiteStore(str(db_path))
    await one.open()
    await two.open()
    try:
        await one.create_user(new_user(1))
        _backup(db_path, tmp_path / "backup.db")
        _delete(db_path)
        for replica in (one, two):
            with pytest.raises(StoreUnavailable):
                await replica.ping()
        _remove_journal(db_path)
        shutil.copyfile(tmp_path / "backup.db", db_path)
        await one.ping()
        await one.create_user(new_user(2))  # its journal is newer than the file
        await two.ping()
        await two.create_user(new_user(3))
        assert _count(db_path) == 3
    finally:
        await one.close()
        await two.close()


async def test_a_file_that_is_no_meshdemo_database_is_not_adopted(
    store: SQLiteStore, db_path: Path
) -> None:
    _delete(db_path)
    _remove_journal(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    with pytest.raises(StoreUnavailable, match="replaced"):
        await store.ping()
    with pytest.raises(StoreUnavailable, match="no meshdemo schema"):
        await store.ping()
    conn = sqlite3.connect(db_path)
    try:  # left as it was: not switched to WAL, nothing written
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()
    _delete(db_path)
    _write(db_path, b"not a database, just text " * 200)
    with pytest.raises(StoreUnavailable, match="not a database"):
        await store.ping()


async def test_a_first_open_next_to_a_deleted_files_journal_creates_nothing(
    store: SQLiteStore, db_path: Path
) -> None:
    await store.create_user(new_user(1))
    _delete(db_path)  # the running store keeps the -wal and -shm in use
    late = SQLiteStore(str(db_path))
    try:
        with pytest.raises(StoreUnavailable, match="deleted while in use"):
            await late.open()
        assert not _exists(db_path)
    finally:
        await late.close()


async def test_a_file_made_read_only_refuses_writes_and_recovers(
    store: SQLiteStore, db_path: Path
) -> None:
    kept = await store.create_user(new_user(1))
    with read_only(db_path):
        with pytest.raises(StoreUnavailable, match="read-only"):
            await store.create_user(new_user(2))
        with pytest.raises(StoreUnavailable, match="read-only"):
            await store.ping()
    await store.ping()
    assert await store.get_user(kept.id) == kept
    await store.create_user(new_user(2))
    assert _count(db_path) == 2


async def test_a_directory_made_read_only_refuses_writes_and_recovers(
    store: SQLiteStore, db_path: Path
) -> None:
    await store.create_user(new_user(1))
    with read_only(db_path.parent):
        with pytest.raises(StoreUnavailable, match=r"directory .* is read-only"):
            await store.create_user(new_user(2))
        with pytest.raises(StoreUnavailable, match="directory"):
            await store.ping()
    await store.ping()
    await store.create_user(new_user(2))
    assert _count(db_path) == 2


@pytest.mark.parametrize("what", ["file", "directory"])
async def test_a_store_started_read_only_is_unavailable_until_writable(
    db_path: Path, what: str
) -> None:
    setup = SQLiteStore(str(db_path))
    await setup.open()
    await setup.create_user(new_user(1))
    await setup.close()
    store = SQLiteStore(str(db_path))
    try:
        with read_only(db_path if what == "file" else db_path.parent):
            with pytest.raises(StoreUnavailable, match="read-only"):
                await store.open()
            with pytest.raises(StoreUnavailable, match="read-only"):
                await store.ping()
        await store.ping()
        await store.create_user(new_user(2))
        assert _count(db_path) == 2
    finally:
        await store.close()


async def test_a_connection_sqlite_opened_read_only_is_reopened(
    store: SQLiteStore, db_path: Path
) -> None:
    """The file was writable when checked but SQLite opened it read-only (a race)."""
    await store.create_user(new_user(1))
    assert store._writer is not None
    await store._writer.close()
    store._writer = await aiosqlite.connect(
        f"file:{db_path}?mode=ro", uri=True, isolation_level=None
    )
    with pytest.raises(StoreUnavailable, match="readonly"):
        await store.ping()
    await store.ping()  # reopened read-write
    await store.create_user(new_user(2))
    assert _count(db_path) == 2


async def test_a_lock_held_by_another_process_does_not_fail_the_write_probe(
    store: SQLiteStore, db_path: Path
) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None, timeout=0.05)
    try:
        raw.execute("BEGIN IMMEDIATE")
        await store.ping()
        raw.execute("ROLLBACK")
        await store.create_user(new_user(1))  # the busy timeout is back in force
    finally:
        raw.close()
