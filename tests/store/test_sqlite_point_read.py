"""SQLite GetUser point reads: on the event loop, off it when the file is busy."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.store import StoreUnavailable
from service.store._sqlite import SQLiteStore
from tests.store._users import new_user


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(db_path), busy_timeout_ms=2000)
    await opened.open()
    yield opened
    await opened.close()


class _FailingConnection:
    """Stands in for the loop's connection: every statement fails with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        self.calls = 0

    def execute(self, *args: Any) -> Any:
        self.calls += 1
        exc = sqlite3.OperationalError(self.message)
        exc.sqlite_errorcode = self.code
        raise exc

    def close(self) -> None:
        pass


async def test_a_point_read_does_not_leave_the_loop(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await store.create_user(new_user(1))

    async def no_thread(*args: Any) -> Any:
        raise AssertionError("the reader thread was used")

    assert store._reader is not None
    monkeypatch.setattr(store._reader, "execute_fetchall", no_thread)
    assert await store.get_user(user.id) == user
    assert await store.get_user("missing") is None


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (sqlite3.SQLITE_BUSY, "database is locked"),
        (sqlite3.SQLITE_LOCKED, "database table is locked"),
        (sqlite3.SQLITE_BUSY | (2 << 8), "database is locked"),  # SQLITE_BUSY_SNAPSHOT
    ],
)
async def test_a_busy_file_is_read_by_the_reader_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, code: int, message: str
) -> None:
    user = await store.create_user(new_user(2))
    busy = _FailingConnection(code, message)
    monkeypatch.setattr(store, "_point_reader", busy)
    assert await store.get_user(user.id) == user
    assert busy.calls == 1


async def test_another_failure_of_a_point_read_is_unavailable(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await store.create_user(new_user(3))
    monkeypatch.setattr(store, "_point_reader", _FailingConnection(10, "disk I/O error"))
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        await store.get_user(user.id)


async def test_close_releases_the_point_reader(store: SQLiteStore) -> None:
    user = await store.create_user(new_user(4))
    assert await store.get_user(user.id) == user
    await store.close()
    assert store._point_reader is None
    with pytest.raises(StoreUnavailable):
        await store.get_user(user.id)
