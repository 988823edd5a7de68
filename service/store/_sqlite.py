"""The SQLite backend: one database file that several replica processes share.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with an
optional ``?busy_timeout_ms=5000`` (how long a statement waits for another
process's lock before the store reports itself unavailable).

Concurrency, across processes:
- the WAL journal lets readers run while one process writes;
- every write runs in ``BEGIN IMMEDIATE``, which takes the file's write lock
  before the first read, so the read-then-insert of a create is atomic across
  processes (no request-id race is possible) and two writers never deadlock
  upgrading a read lock; a lock not granted within the busy timeout becomes
  StoreUnavailable (retryable).

Concurrency, inside one process:
- one writer connection, used by one transaction at a time under an
  ``asyncio.Lock``: aiosqlite runs the calls of every coroutine on the
  connection's single thread in arrival order, so two transactions sharing it
  would interleave their statements;
- one reader connection in autocommit mode: every read is one statement with
  its own snapshot, fetched whole, so no snapshot outlives the statement.
- GetUser's point read first runs on the event loop itself, on a third,
  plain ``sqlite3`` connection with no busy timeout: one primary-key lookup
  in WAL mode never waits for a writer, so it costs a few page reads and
  saves the hop to the reader thread and back (about a quarter of a
  GetUser's CPU; see docs/PERFORMANCE.md). If SQLite answers busy or
  locked (a checkpoint or recovery holds the file), the read goes to the
  reader thread, which waits up to the busy timeout off the loop.

Listing (``iter_users``) is keyset pagination in chunks of ``chunk_size``
rows (``WHERE id > ? ORDER BY id LIMIT ?``): one statement per chunk on the
reader, nothing held between chunks, so a cancelled stream stops at the next
chunk and a slow client holds no lock, no snapshot and at most one chunk of
rows.

Lifecycle: ``open()`` connects and migrates; if that fails it raises
StoreUnavailable and every later call retries it, so a replica can start while
the file is unreachable and turn SERVING once it is back. ``close()`` is
final and idempotent.

The file the store opened is the store (the rules of truthful health):
- the store remembers the device and inode of the file it opened. ``ping()``
  (the health probe) and every write compare them with what the path names
  now (one ``os.stat``) and check that the file, its ``-wal``/``-shm``
  companions and its directory are writable (``os.access``, which also sees
  ``chattr +i`` and read-only mounts, even for root); ``ping()`` then runs a
  write that changes nothing (``UPDATE ... WHERE 0``), which SQLite refuses on
  a connection it opened read-only;
- a write is committed only after that check passes, and acknowledged only
  if the path still names the same file after COMMIT: nothing is ever
  acknowledged into a deleted or replaced file; it is refused with
  StoreUnavailable (UNAVAILABLE, so the client retries elsewhere);
- when a check fails, the connections are closed, and every later call (the
  probe included) tries to reopen: the replica recovers by itself when the
  file is restored or made writable again;
- a new file is created only at the first open of the store's life, and not
  even then if a ``-wal`` or ``-shm`` file is left without its database
  (the database was deleted under a running replica: a new file next to them
  would mix the old journal into it). After that, the store reopens only a
  file that exists at the path (``mode=rw``: SQLite never creates it) and
  holds the meshdemo schema (a ``schema_migrations`` table); pending
  migrations are then applied as at start. So a replica never silently
  starts an empty database of its own, and a restored copy is adopted;
- a file that *replaced* the opened one (a restored copy) is adopted only if
  no ``-wal``/``-shm`` is next to it, or its ``-wal`` was written after the
  file was put in place (by a replica that adopted it first): a journal of
  the previous file would be replayed into the new one by SQLite. To restore
  a copy: remove ``users.db-wal`` and ``users.db-shm``, then put the copy
  (``sqlite3 users.db ".backup copy.db"`` makes one) at the path;
- reads are served from the opened file until the next probe or write finds
  it gone (at most one health interval): they never acknowledge anything.

What these rules cannot see: if the database *and* its journal are deleted
(``rm users.db*``), nothing is left to tell a fresh replica, so one started
then creates a new, empty file, and the running replicas adopt it. The rows
are gone with the files, but no write was acknowledged into a deleted file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import aiosqlite

from service.domain import NewUser, User, utc_now
from service.store._base import StoreUnavailable
from service.store._keyset import keyset_pages
from service.store._plan import Insert, Stored, plan_creates
from service.store._schema import MIGRATIONS_TABLE_SQLITE, pending

__all__ = ["SQLiteStore"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
# Keys per IN (...) lookup: far below SQLite's bound on host parameters.
_LOOKUP_CHUNK: Final = 500
_COLUMNS: Final = "id, name, email, age, roles, created_at, request_fingerprint"
_GET_USER: Final = f"SELECT {_COLUMNS} FROM users WHERE id = ?"
# A write that changes nothing: refused only by a connection that cannot write.
_WRITE_PROBE: Final = "UPDATE schema_migrations SET version = version WHERE 0"
_HAS_SCHEMA: Final = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
)
_INSERT: Final = (
    "INSERT INTO users (id, name, email, email_key, age, roles, created_at,"
    " request_id, request_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteStore:
    """A :class:`~service.store.Store` on one SQLite file (see the module docstring).

    Args:
        path: the database file; its directory must exist.
        busy_timeout_ms: how long to wait for another connection's lock.
        chunk_size: rows per query when listing.
        ping_timeout: seconds ``ping()`` may take.
        clock: the source of ``created_at`` (a seam for tests).
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 5000,
        chunk_size: int = 100,
        ping_timeout: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not path or path == ":memory:":
            raise ValueError("SQLiteStore needs a file path (a memory database is not shared)")
        if busy_timeout_ms < 0 or chunk_size < 1 or ping_timeout <= 0:
            raise ValueError("busy_timeout_ms >= 0, chunk_size >= 1 and ping_timeout > 0")
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._chunk_size = chunk_size
        self._ping_timeout = ping_timeout
        self._clock = clock
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # The loop's own connection for point reads; None until connected.
        self._point_reader: sqlite3.Connection | None = None
        # The file the connections use (None while not connected).
        self._file: _FileId | None = None
        # The file the store last opened; once set, it never creates one again.
        self._last_file: _FileId | None = None
        self._started = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        # Held for the whole of every write transaction on self._writer.
        self._write_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """Build a store from ``sqlite:///PATH[?busy_timeout_ms=N]``."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"not a SQLite URL {url!r}: use sqlite:///FILE or sqlite:////ABS")
        # sqlite:///a.db -> "/a.db" -> "a.db"; sqlite:////abs.db -> "//abs.db" -> "/abs.db"
        path = parts.path[1:]
        options = dict(parse_qsl(parts.query, strict_parsing=bool(parts.query)))
        unknown = set(options) - {"busy_timeout_ms"}
        if unknown:
            raise ValueError(f"unknown SQLite URL option(s) {sorted(unknown)}")
        return cls(path, busy_timeout_ms=int(options.get("busy_timeout_ms", "5000")))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._writer else "not connected"
        return f"SQLiteStore(path={self._path!r}, {state})"

    async def open(self) -> None:
        """Connect and migrate; raise StoreUnavailable if the file cannot be used."""
        if self._closed:
            raise StoreUnavailable("the user store is closed")
        self._started = True
        await self._connections()

    async def close(self) -> None:
        """Close both connections; idempotent, and the store is unusable afterwards."""
        self._closed = True
        async with self._open_lock:
            await self._disconnect()

    async def ping(self) -> None:
        """Check that reads and writes work on the opened file, else raise StoreUnavailable.

        Within ``ping_timeout``: the path still names the opened file and it is
        writable, the schema table reads, and a write that changes nothing is
        accepted. A failed check closes the connections, so the next call
        reopens the file by the module's rules.
        """
        try:
            async with asyncio.timeout(self._ping_timeout):
                writer, reader = await self._connections()
                await self._check_file(writer)
                # Not "SELECT 1": SQLite answers that without touching the file.
                with _translated():
                    await reader.execute_fetchall("SELECT 1 FROM schema_migrations LIMIT 1")
                await self._probe_write(writer)
        except TimeoutError as exc:
            raise StoreUnavailable("the user store did not answer in time") from exc

    async def _check_file(self, writer: aiosqlite.Connection, *, writable: bool = True) -> None:
        """Raise StoreUnavailable (closing the connections) unless the path names our file."""
        problem = _identity_problem(self._path, self._file)
        if problem is None and writable:
            problem = _writability_problem(self._path)
        if problem is not None:
            await self._invalidate(writer)
            raise StoreUnavailable(f"the SQLite file {self._path} {problem}")

    async def _probe_write(self, writer: aiosqlite.Connection) -> None:
        """Run a write that changes nothing; a lock held elsewhere counts as writable."""
        if self._write_lock.locked():
            # A write of ours is under way: it checks the file itself before
            # COMMIT, and a probe queued behind it would only time out.
            return
        async with self._write_lock:
            try:
                # No wait for another process's write lock: busy proves the file takes writes.
                await writer.execute_fetchall("PRAGMA busy_timeout = 0")
                await writer.execute_fetchall(_WRITE_PROBE)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: closed under us
                if not (isinstance(exc, sqlite3.OperationalError) and _busy(exc)):
                    await self._invalidate(writer)
                    raise StoreUnavailable(f"the user store refuses writes ({exc})") from exc
            finally:
                await asyncio.shield(_set_busy_timeout(writer, self._busy_timeout_ms))

    async def get_user(self, user_id: str) -> User | None:
        """The user with ``user_id``, or None."""
        _, reader = await self._connections()
        with _translated():
            rows = self._point_read(_GET_USER, (user_id,))
            if rows is None:  # the file is busy: wait for it off the loop
                rows = list(await reader.execute_fetchall(_GET_USER, (user_id,)))
        return _user(rows[0]) if rows else None

    def _point_read(self, query: str, parameters: tuple[Any, ...]) -> list[Any] | None:
        """``query``'s rows read on the loop, or None when SQLite is busy or locked."""
        conn = self._point_reader
        if conn is None:
            return None
        try:
            return conn.execute(query, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return None
            raise

    async def create_user(self, new: NewUser) -> User:
        """Store one user, or replay the one its request id made."""
        return (await self._create([new], batch=False))[0]

    async def create_users(self, news: Sequence[NewUser]) -> list[User]:
        """Store all of ``news`` in one transaction, or none of them."""
        return await self._create(news, batch=True)

    def iter_users(self, after_id: str | None, limit: int) -> AsyncIterator[User]:
        """Up to ``limit`` users with id greater than ``after_id``, in id order."""
        return keyset_pages(self._users_after, after_id, limit, self._chunk_size)

    async def _users_after(self, last_id: str, count: int) -> list[User]:
        _, reader = await self._connections()
        with _translated():
            rows = await reader.execute_fetchall(
                f"SELECT {_COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?", (last_id, count)
            )
        return [_user(row) for row in rows]

    async def _create(self, news: Sequence[NewUser], *, batch: bool) -> list[User]:
        if not news:
            return []
        async with self._write() as conn:
            # Under BEGIN IMMEDIATE no other process writes between this read
            # and the insert, so the unique constraints can only fail on a bug
            # (or an 80-bit id collision), which surfaces as INTERNAL.
            replays, taken = await _collisions(conn, news)
            plan = plan_creates(
                news, replays=replays, taken_emails=taken, now=self._clock(), batch=batch
            )
            if plan.inserts:
                with _translated():
                    cursor = await conn.executemany(_INSERT, [_row(i) for i in plan.inserts])
                    await cursor.close()
            return plan.users

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction on the writer, committed if the body returns.

        Committed only while the path names the opened, writable file, and
        returned (acknowledged) only if it still names it after COMMIT.
        """
        writer, _ = await self._connections()
        async with self._write_lock:
            try:
                # BEGIN is inside the try: if the caller is cancelled while
                # BEGIN waits for the file lock, BEGIN still completes on the
                # connection's thread, and the rollback queued behind it must
                # release the lock at once.
                with _translated():
                    await _discard_stale_transaction(writer)
                    await writer.execute_fetchall("BEGIN IMMEDIATE")
                yield writer
                await self._check_file(writer)
                with _translated():
                    await writer.execute_fetchall("COMMIT")
            except BaseException as exc:
                # Shielded: a cancelled caller must still leave no open transaction.
                await asyncio.shield(_rollback(writer))
                if _needs_reopen(exc):
                    await self._invalidate(writer)
                raise
            # Deleted or replaced between the check and COMMIT: the rows went
            # into a file nobody will read again, so they are not acknowledged.
            await self._check_file(writer, writable=False)

    async def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        """The writer and the reader, connecting (and migrating) first if needed."""
        self._check_usable()
        if self._writer is not None and self._reader is not None:
            return self._writer, self._reader
        async with self._open_lock:
            self._check_usable()
            if self._writer is not None and self._reader is not None:
                return self._writer, self._reader
            return await self._connect()

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreUnavailable("the user store is closed")
        if not self._started:
            raise StoreUnavailable("the user store is not open yet")

    async def _connect(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        create = self._last_file is None
        before = _admit(self._path, self._last_file)
        try:
            with _translated():
                self._writer = await self._connection(create=create)
                if not create:  # before anything writes to a file that may not be ours
                    await _require_schema(self._writer, self._path)
                await _set_wal(self._writer, self._busy_timeout_ms)
                await _migrate(self._writer, self._clock())
                self._reader = await self._connection(create=False)
                await self._reader.execute_fetchall("PRAGMA query_only = ON")
                self._point_reader = _point_reader(_uri(self._path, create=False))
            self._file = self._last_file = _opened_file(self._path, before)
            return self._writer, self._reader
        except BaseException:
            await self._disconnect()
            raise

    async def _connection(self, *, create: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(
            _uri(self._path, create=create),
            uri=True,
            isolation_level=None,
            timeout=self._busy_timeout_ms / 1000,
        )
        try:
            await _set_busy_timeout(conn, self._busy_timeout_ms)
        except BaseException:
            await conn.close()
            raise
        return conn

    def _forget(self, writer: aiosqlite.Connection) -> list[Any]:
        """Drop the connections if ``writer`` is still current; return them to close.

        Synchronous, so no other coroutine sees half of a set; a newer set of
        connections (made by a concurrent reopen) is never dropped.
        """
        if self._writer is not writer:
            return []
        conns: list[Any] = [self._writer, self._reader, self._point_reader]
        self._writer = self._reader = self._point_reader = None
        self._file = None
        return conns

    async def _invalidate(self, writer: aiosqlite.Connection) -> None:
        """Close the connections if ``writer`` is still current: the next call reopens."""
        await _close_all(self._forget(writer))

    async def _disconnect(self) -> None:
        writer, reader, point = self._writer, self._reader, self._point_reader
        self._writer = self._reader = self._point_reader = None
        self._file = None
        await _close_all([point, writer, reader])


async def _close_all(conns: Sequence[Any]) -> None:
    for conn in conns:
        if isinstance(conn, sqlite3.Connection):
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        elif conn is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.close()


@dataclass(frozen=True, slots=True)
class _FileId:
    """Which file a path named: an inode is not reused while we hold it open."""

    device: int
    inode: int


def _file_id(path: str) -> _FileId | None:
    """The file ``path`` names now, or None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _FileId(st.st_dev, st.st_ino)


def _companions(path: str) -> tuple[str, str]:
    return f"{path}-wal", f"{path}-shm"


def _identity_problem(path: str, opened: _FileId | None) -> str | None:
    """What happened to the opened file at ``path``, or None if it is still there."""
    current = _file_id(path)
    if current is None:
        return "was deleted under this replica; writes are refused until it is restored"
    if current != opened:
        return "was replaced by another file; writes are refused until it is reopened"
    return None


def _writability_problem(path: str) -> str | None:
    """Why SQLite could not write (or reopen) ``path`` in WAL mode, or None."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: its directory {folder} is read-only (WAL needs it writable)"
    for name in (path, *_companions(path)):
        if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
            return f"cannot be written: {name} is read-only"
    return None


def _admit(path: str, last: _FileId | None) -> _FileId | None:
    """Check ``path`` before connecting; the file it names (None: to be created).

    ``last`` is the file opened before (None at the first open). Raises
    StoreUnavailable if the file is not writable, missing after the first
    open, missing with a journal left behind, or a new file next to the
    previous file's journal.
    """
    problem = _writability_problem(path)
    if problem is not None:
        raise StoreUnavailable(f"the SQLite file {path} {problem}")
    found = _file_id(path)
    if found is not None:
        if last is not None and found != last:
            _check_fresh_journal(path)
        return found
    if last is not None:
        raise StoreUnavailable(
            f"the SQLite file {path} is missing; this replica never creates a new one"
            " after its first open: restore the file at that path"
        )
    leftovers = [name for name in _companions(path) if os.path.exists(name)]
    if leftovers:
        raise StoreUnavailable(
            f"the SQLite file {path} is missing but {', '.join(leftovers)} exist: the database"
            " was deleted while in use; restore it, or remove those files to start empty"
        )
    return None


def _check_fresh_journal(path: str) -> None:
    """Refuse a file that replaced the opened one while its predecessor's journal is there.

    SQLite would replay a ``-wal`` left by the previous file into the new one.
    A journal written after the new file was put in place (by a replica that
    adopted it first) is the new file's own.
    """
    wal, shm = _companions(path)
    if not os.path.exists(wal) and not os.path.exists(shm):
        return
    try:
        fresh = os.stat(wal).st_mtime_ns > os.stat(path).st_ctime_ns
    except FileNotFoundError:  # a -shm without its -wal
        fresh = False
    if not fresh:
        raise StoreUnavailable(
            f"the SQLite file {path} was replaced, but {wal} and {shm} are the previous"
            " file's journal; remove them to let the replicas adopt the new file"
        )


def _opened_file(path: str, before: _FileId | None) -> _FileId:
    """The file the new connections use: the path must name the same one as before."""
    after = _file_id(path)
    if after is None or (before is not None and after != before):
        raise StoreUnavailable(f"the SQLite file {path} changed while it was being opened")
    return after


def _uri(path: str, *, create: bool) -> str:
    """A SQLite URI for ``path``; without ``create`` SQLite fails rather than create it."""
    return f"file:{quote(path)}?mode={'rwc' if create else 'rw'}"


async def _require_schema(conn: aiosqlite.Connection, path: str) -> None:
    if not list(await conn.execute_fetchall(_HAS_SCHEMA)):
        raise StoreUnavailable(
            f"the SQLite file {path} has no meshdemo schema; a reopened file must have one"
        )


async def _set_busy_timeout(conn: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):  # closed: nothing to restore
        await conn.execute_fetchall(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")


def _point_reader(uri: str) -> sqlite3.Connection:
    """A read-only autocommit connection that never waits for a lock."""
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _needs_reopen(exc: BaseException) -> bool:
    """Whether a failed write leaves the connections unusable until a reopen.

    A read-only connection, an I/O error or a file that is no database does
    not heal on the same connection; a busy lock or a constraint does.
    """
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
    if not isinstance(cause, sqlite3.Error) or isinstance(cause, sqlite3.IntegrityError):
        return False
    return not (isinstance(cause, sqlite3.OperationalError) and _busy(cause))


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` only says another connection holds a lock right now."""
    # The low byte is the primary result code (SQLITE_BUSY_SNAPSHOT is BUSY).
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn transient SQLite failures into StoreUnavailable; let bugs through."""
    try:
        yield
    except (sqlite3.Error, ValueError) as exc:
        reason = _transient_reason(exc)
        if reason is None:
            raise
        raise StoreUnavailable(f"the user store is unavailable ({reason})") from exc


def _transient_reason(exc: sqlite3.Error | ValueError) -> str | None:
    """Why ``exc`` is a transient failure, or None if it is a bug (integrity, SQL)."""
    text = str(exc).split("\n", 1)[0][:80]
    if isinstance(exc, sqlite3.OperationalError):  # locked, busy, I/O error, cannot open
        return text
    if type(exc) is sqlite3.DatabaseError:  # not a database, malformed disk image
        return text
    if isinstance(exc, sqlite3.ProgrammingError) and "closed database" in text:
        return "connection closed"  # a call queued before close() ran after it
    if isinstance(exc, ValueError) and text in {"Connection closed", "no active connection"}:
        return "connection closed"  # aiosqlite refuses calls after close()
    return None


async def _discard_stale_transaction(writer: aiosqlite.Connection) -> None:
    # A rollback interrupted by cancellation may still be queued on the
    # writer's thread; a leftover transaction must not swallow the next one.
    if writer.in_transaction:
        await _rollback(writer)


async def _rollback(writer: aiosqlite.Connection) -> None:
    # "no transaction is active" after a failed COMMIT, or a closed connection.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await writer.execute_fetchall("ROLLBACK")


async def _set_wal(conn: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    mode = await _switch_to_wal(conn, busy_timeout_ms / 1000)
    if mode != "wal":
        raise StoreUnavailable(f"SQLite refused the WAL journal (journal_mode={mode!r})")
    # NORMAL is durable against process crashes in WAL mode; a power loss may
    # lose the last transactions but never corrupts the file.
    await conn.execute_fetchall("PRAGMA synchronous = NORMAL")


async def _switch_to_wal(conn: aiosqlite.Connection, patience: float) -> str:
    """Set the WAL journal, retrying while other connections hold the file.

    Leaving the rollback journal needs the file to itself, and SQLite answers
    "database is locked" at once instead of calling the busy handler (this is
    what several replicas opening a new file at the same moment run into).
    Once the file is in WAL mode the pragma needs no lock and never waits.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.005
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            continue
        return str(rows[0][0]).lower() if rows else ""


async def _migrate(conn: aiosqlite.Connection, now: datetime) -> None:
    """Apply pending migrations under the file's write lock (idempotent across processes)."""
    try:
        await conn.execute_fetchall("BEGIN IMMEDIATE")
        await conn.execute_fetchall(MIGRATIONS_TABLE_SQLITE)
        applied = [
            r[0] for r in await conn.execute_fetchall("SELECT version FROM schema_migrations")
        ]
        for migration in pending(applied):
            for statement in migration.sqlite:
                await conn.execute_fetchall(statement)
            await conn.execute_fetchall(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, _micros(now)),
            )
        await conn.execute_fetchall("COMMIT")
    except BaseException:
        await asyncio.shield(_rollback(conn))
        raise


async def _collisions(
    conn: aiosqlite.Connection, news: Sequence[NewUser]
) -> tuple[dict[str, Stored], set[str]]:
    """Stored rows sharing a request id with ``news``, and the email keys taken."""
    keys = sorted({n.request_id for n in news if n.request_id})
    emails = sorted({n.email_key for n in news})
    replays: dict[str, Stored] = {}
    taken: set[str] = set()
    with _translated():
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {_COLUMNS}, request_id FROM users WHERE request_id IN ({marks})"
            for row in await conn.execute_fetchall(sql, chunk):
                replays[row[7]] = Stored(_user(row), row[6])
        for chunk in _chunks(emails):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT email_key FROM users WHERE email_key IN ({marks})"
            taken.update(row[0] for row in await conn.execute_fetchall(sql, chunk))
    return replays, taken


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _LOOKUP_CHUNK):
        yield items[start : start + _LOOKUP_CHUNK]


def _row(insert: Insert) -> tuple[Any, ...]:
    user, new = insert.user, insert.new
    return (
        user.id,
        user.name,
        user.email,
        new.email_key,
        user.age,
        json.dumps(list(user.roles)),
        _micros(user.created_at),
        new.request_id or None,  # NULLs never collide in a UNIQUE column
        new.fingerprint(),
    )


def _user(row: Sequence[Any]) -> User:
    return User(
        id=row[0],
        name=row[1],
        email=row[2],
        age=row[3],
        roles=tuple(json.loads(row[4])),
        created_at=_EPOCH + row[5] * _MICROSECOND,
    )


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND
