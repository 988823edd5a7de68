"""The PostgreSQL backend: the cluster's store, shared by every replica.

URL: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]``. Any libpq
parameter may be given as an option (``connect_timeout``, ``sslmode``,
``options``, ...); these options belong to the store and are removed before
the URL reaches libpq:

- ``pool_min`` (default 1): connections the pool keeps open;
- ``pool_max`` (default 10): connections it may open under load;
- ``pool_timeout`` (default 5, seconds): how long a call waits for a pooled
  connection before the store reports itself unavailable.

Without ``connect_timeout`` in the URL a new connection gives up after 5 s.

Failures: connection errors, pool timeouts and every ``psycopg.OperationalError``
(server shutdown, serialization failure, cancelled statement...) become
StoreUnavailable, which is retryable.

Outages fail fast (a circuit breaker). The store is *known down* once a fresh
connection cannot be made (a direct probe: ``connect`` + ``SELECT 1`` within
``ping_timeout``) or a query loses its connection (SQLSTATE class 08,
server shutdown 57P01-57P03). From then on every call raises
StoreUnavailable at once, without touching the pool, and calls already
waiting for a pooled connection are woken and fail too. A probe runs
when a call has waited ``suspect_after`` seconds for a pooled connection (at
most one per second), so an outage is noticed within a fraction of a second
of the first call that meets it; a pool that is merely exhausted passes the
probe and its callers keep waiting up to ``pool_timeout`` as before. Only
``ping()`` (the health probe, every health interval) closes the circuit:
while the store is down it runs the direct probe, and once that answers it
opens a fresh pool (the old one, whose connections died with the server, is
closed when the circuit trips, so it does not keep reconnecting to a dead
server) and the replica serves again without a restart.

Creates: each create runs in one transaction that reads the rows it could
collide with, applies :func:`~service.store._plan.plan_creates` and inserts.
Two replicas may insert the same request id or email at the same moment;
the loser's insert waits for the winner's commit and fails on the unique
constraint, and the loser then retries its whole transaction, whose read now
sees the winner's row (a replay, or AlreadyExists).

Listing (``iter_users``) is keyset pagination in chunks of ``chunk_size``
rows (``WHERE id > %s ORDER BY id LIMIT %s``): every chunk borrows a pooled
connection in autocommit mode for one statement and returns it before
yielding, so no transaction or connection is held between chunks; a
cancelled stream stops at the next chunk and a slow client holds nothing.

Lifecycle: ``open()`` migrates over a direct connection (bounded by the
connect timeout), then opens the pool without waiting for it to fill. If the
server is down ``open()`` raises StoreUnavailable and every later call,
``ping()`` included, retries it, so a replica starts, reports NOT_SERVING and
turns SERVING once the database is back. ``close()`` is final and idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from service.domain import NewUser, User, utc_now
from service.store._base import StoreUnavailable
from service.store._keyset import keyset_pages
from service.store._plan import Insert, Stored, plan_creates
from service.store._schema import ADVISORY_LOCK_KEY, MIGRATIONS_TABLE_POSTGRES, pending

__all__ = ["PostgresStore"]

_Connection = psycopg.AsyncConnection[TupleRow]
_Pool = AsyncConnectionPool[_Connection]

_STORE_OPTIONS: Final = frozenset({"pool_min", "pool_max", "pool_timeout"})
_DEFAULT_CONNECT_TIMEOUT: Final = 5
# libpq's smallest connect timeout; ping_timeout bounds the probe further.
_PROBE_CONNECT_TIMEOUT: Final = 2
# At most one probe per this many seconds is started by waiting calls.
_PROBE_EVERY: Final = 1.0
# SQLSTATEs that mean the server went away (beyond class 08, connection exception).
_SERVER_GONE: Final = frozenset({"57P01", "57P02", "57P03"})

log = logging.getLogger("meshdemo.store")
_COLUMNS: Final = "id, name, email, age, roles, created_at, request_fingerprint"
_INSERT: Final = (
    "INSERT INTO users (id, name, email, email_key, age, roles, created_at,"
    " request_id, request_fingerprint) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class PostgresStore:
    """A :class:`~service.store.Store` on PostgreSQL (see the module docstring).

    Args:
        conninfo: a libpq URL or connection string, without the store's options.
        pool_min: connections the pool keeps open.
        pool_max: connections the pool may open.
        pool_timeout: seconds a call waits for a pooled connection.
        ping_timeout: seconds ``ping()`` may take.
        chunk_size: rows per query when listing.
        create_attempts: transactions a create may run when racing other replicas.
        suspect_after: seconds a call waits for a pooled connection before a
            probe checks whether the server is down.
        clock: the source of ``created_at`` (a seam for tests).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 5.0,
        ping_timeout: float = 2.0,
        chunk_size: int = 100,
        create_attempts: int = 3,
        suspect_after: float = 0.2,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError(
                f"need 0 <= pool_min <= pool_max, pool_max >= 1: {pool_min}, {pool_max}"
            )
        if (
            min(pool_timeout, ping_timeout, suspect_after) <= 0
            or min(chunk_size, create_attempts) < 1
        ):
            raise ValueError("timeouts must be positive, chunk_size and create_attempts >= 1")
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid PostgreSQL connection string: {exc}") from exc
        self._conninfo = conninfo
        self._display = _redacted(conninfo)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": int(params.get("connect_timeout") or _DEFAULT_CONNECT_TIMEOUT),
        }
        if "application_name" not in params:
            self._connect_kwargs["application_name"] = "meshdemo-service"
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._pool_timeout = pool_timeout
        self._ping_timeout = ping_timeout
        self._chunk_size = chunk_size
        self._create_attempts = create_attempts
        self._clock = clock
        self._suspect_after = suspect_after
        self._pool: _Pool | None = None
        self._started = False
        self._closed = False
        self._open_lock = asyncio.Lock()
        # The circuit: why the server is known down, or None while it is not.
        self._outage: str | None = None
        # The waits of calls for a pooled connection, expired when the store trips.
        self._waiting: set[asyncio.Timeout] = set()
        self._probe: asyncio.Task[None] | None = None
        self._last_probe = float("-inf")
        # Pools replaced after an outage, closing in the background.
        self._retiring: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Build a store from a URL; ``pool_min``, ``pool_max``, ``pool_timeout`` are ours."""
        parts = urlsplit(url)
        if parts.scheme not in {"postgresql", "postgres"}:
            raise ValueError(f"not a PostgreSQL URL: {_redacted(url)!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _STORE_OPTIONS}
        rest = [(k, v) for k, v in query if k not in _STORE_OPTIONS]
        conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
        try:
            return cls(
                conninfo,
                pool_min=int(ours.get("pool_min", "1")),
                pool_max=int(ours.get("pool_max", "10")),
                pool_timeout=float(ours.get("pool_timeout", "5")),
            )
        except ValueError as exc:
            raise ValueError(f"bad PostgreSQL store URL {_redacted(url)!r}: {exc}") from exc

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._pool else "not connected"
        return f"PostgresStore({self._display!r}, {state})"

    async def open(self) -> None:
        """Migrate and open the pool; raise StoreUnavailable if the server is unreachable."""
        if self._closed:
            raise StoreUnavailable("the user store is closed")
        self._started = True
        await self._ready_pool()

    async def close(self) -> None:
        """Close the pool; idempotent, and the store is unusable afterwards."""
        self._closed = True
        self._wake_waiting()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        async with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def ping(self) -> None:
        """Run ``SELECT 1`` on a pooled connection within ``ping_timeout``.

        While the store is known down, first probe the server directly; if it
        answers, replace the pool and close the circuit. Raises StoreUnavailable
        when the server or the pool does not answer in time.
        """
        try:
            async with asyncio.timeout(self._ping_timeout):
                if self._outage is not None:
                    await self._recover()
                pool = await self._ready_pool()
                with _translated():
                    async with self._connection(pool, timeout=self._ping_timeout) as conn:
                        await conn.execute("SELECT 1")
        except TimeoutError as exc:
            raise StoreUnavailable("the user store did not answer in time") from exc

    async def _recover(self) -> None:
        """Close the circuit if a fresh connection answers; else raise StoreUnavailable."""
        why = await self._unreachable()
        if why is not None:
            self._trip(why)
            raise StoreUnavailable(f"the user store is down ({why})")
        # The pool was retired at the trip: ping() goes on to make a fresh one
        # (migrating first, which costs one query when nothing is pending).
        self._outage = None
        log.info("user store reachable again: serving calls")

    async def _unreachable(self) -> str | None:
        """Why a fresh connection fails ``SELECT 1`` within ``ping_timeout``, or None."""
        kwargs = {**self._connect_kwargs, "connect_timeout": _PROBE_CONNECT_TIMEOUT}
        try:
            async with asyncio.timeout(self._ping_timeout):
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)
                async with conn:
                    await conn.execute("SELECT 1")
        except TimeoutError:
            return f"no answer within {self._ping_timeout:g} s"
        except (psycopg.Error, OSError) as exc:
            return _first_line(exc)
        return None

    def _trip(self, why: str) -> None:
        """Mark the store down: calls fail fast until ``ping()`` reaches the server."""
        if self._outage is None:
            log.warning("user store down: calls fail fast until it answers", extra={"reason": why})
            self._retire_pool()
        self._outage = why
        self._wake_waiting()

    def _retire_pool(self) -> None:
        """Close the pool in the background: its connections died with the server,
        and it would keep reconnecting to a dead server (with a backoff that
        would also delay the recovery)."""
        old, self._pool = self._pool, None
        if old is None:
            return
        task = asyncio.create_task(old.close(timeout=1.0), name="retire-pool")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _fail_fast(self) -> None:
        self._check_usable()
        if self._outage is not None:
            raise StoreUnavailable(f"the user store is down ({self._outage}); failing fast")

    def _probe_soon(self) -> None:
        """Start a background probe unless one runs or ran within the last second."""
        now = asyncio.get_running_loop().time()
        if (
            self._probe is not None and not self._probe.done()
        ) or now - self._last_probe < _PROBE_EVERY:
            return
        self._last_probe = now
        self._probe = asyncio.create_task(self._background_probe(), name="store-probe")

    async def _background_probe(self) -> None:
        why = await self._unreachable()
        if why is not None and not self._closed:
            self._trip(why)

    @contextlib.asynccontextmanager
    async def _connection(self, pool: _Pool, timeout: float) -> AsyncIterator[_Connection]:
        """A pooled connection; the circuit trips if it turns out the server is gone."""
        conn = await self._checkout(pool, timeout)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            if conn.broken or _server_gone(exc):
                self._trip(_first_line(exc))
            raise
        finally:
            await pool.putconn(conn)

    async def _checkout(self, pool: _Pool, timeout: float) -> _Connection:
        """Wait for a pooled connection, probing the server after ``suspect_after`` s.

        Gives up at once (StoreUnavailable) when the store is found down
        meanwhile: ``_trip`` expires the wait. No task is spawned per call.
        """
        loop = asyncio.get_running_loop()
        suspicion = loop.call_later(self._suspect_after, self._probe_soon)
        try:
            async with asyncio.timeout(None) as waiting:
                self._waiting.add(waiting)
                try:
                    # psycopg_pool gives a connection meant for a cancelled waiter back.
                    return await pool.getconn(timeout)
                finally:
                    self._waiting.discard(waiting)
        except TimeoutError:  # only _trip and close() expire this wait
            self._fail_fast()
            raise StoreUnavailable("the user store is closed") from None
        finally:
            suspicion.cancel()

    def _wake_waiting(self) -> None:
        for waiting in self._waiting:
            if not waiting.expired():  # a second trip must not touch an expiring wait
                waiting.reschedule(0)  # a deadline in the past: expires at once

    async def get_user(self, user_id: str) -> User | None:
        """The user with ``user_id``, or None."""
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))
        return _user(rows[0]) if rows else None

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
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s", (last_id, count)
        )
        return [_user(row) for row in rows]

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[TupleRow]:
        """One autocommit statement on a pooled connection, returned before the rows are used."""
        self._fail_fast()
        pool = await self._ready_pool()
        with _translated():
            async with self._connection(pool, self._pool_timeout) as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()

    async def _create(self, news: Sequence[NewUser], *, batch: bool) -> list[User]:
        if not news:
            return []
        for _ in range(self._create_attempts):
            try:
                return await self._create_once(news, batch=batch)
            except psycopg.errors.UniqueViolation:
                # Another replica committed one of our keys after our read:
                # run again, and the read will see its row.
                continue
        raise StoreUnavailable("concurrent creates kept colliding; retry the request")

    async def _create_once(self, news: Sequence[NewUser], *, batch: bool) -> list[User]:
        self._fail_fast()
        pool = await self._ready_pool()
        with _translated():
            async with self._connection(pool, self._pool_timeout) as conn, conn.transaction():
                replays, taken = await _collisions(conn, news)
                plan = plan_creates(
                    news, replays=replays, taken_emails=taken, now=self._clock(), batch=batch
                )
                if plan.inserts:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(_INSERT, [_row(i) for i in plan.inserts])
                return plan.users

    async def _ready_pool(self) -> _Pool:
        """The pool, migrating and opening it first if that has not succeeded yet."""
        self._check_usable()
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            self._check_usable()
            if self._pool is None:
                try:
                    await self._migrate()
                except StoreUnavailable as exc:
                    # A direct connection failed: known down (ping() retries).
                    self._trip(str(exc.__cause__ or exc))
                    raise
                self._pool = await self._new_pool()
            return self._pool

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreUnavailable("the user store is closed")
        if not self._started:
            raise StoreUnavailable("the user store is not open yet")

    async def _new_pool(self) -> _Pool:
        pool: _Pool = AsyncConnectionPool(
            self._conninfo,
            kwargs=self._connect_kwargs,
            min_size=self._pool_min,
            max_size=self._pool_max,
            timeout=self._pool_timeout,
            # A connection broken by a server restart is replaced, not handed out.
            check=AsyncConnectionPool.check_connection,
            # Give up a background reconnection early; a waiting call starts a new one.
            reconnect_timeout=max(10.0, self._pool_timeout),
            name="meshdemo-users",
            open=False,
        )
        # Never blocks: connections are made in the background.
        await pool.open(wait=False)
        return pool

    async def _migrate(self) -> None:
        """Apply pending migrations, serialized across replicas by an advisory lock."""
        with _translated():
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs)
            async with conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                await conn.execute(MIGRATIONS_TABLE_POSTGRES)
                cursor = await conn.execute("SELECT version FROM schema_migrations")
                applied = [row[0] for row in await cursor.fetchall()]
                for migration in pending(applied):
                    for statement in migration.postgres:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                        (migration.version, migration.description),
                    )


def _server_gone(exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` says the connection or the server went away (not a query's failure)."""
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _SERVER_GONE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().split("\n", 1)[0] or type(exc).__name__)[:200]


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn connection-level failures into StoreUnavailable; let bugs through."""
    try:
        yield
    except psycopg.OperationalError as exc:  # pool timeout, refused, shutdown, ...
        raise StoreUnavailable(f"the user store is unavailable ({type(exc).__name__})") from exc


async def _collisions(
    conn: _Connection, news: Sequence[NewUser]
) -> tuple[dict[str, Stored], set[str]]:
    """Stored rows sharing a request id with ``news``, and the email keys taken.

    One statement, so one snapshot: under READ COMMITTED two statements could
    straddle another replica's commit and see its email but not its request id,
    turning a replay into a false AlreadyExists.
    """
    keys = {n.request_id for n in news if n.request_id}
    emails = {n.email_key for n in news}
    cursor = await conn.execute(
        f"SELECT {_COLUMNS}, request_id, email_key FROM users"
        " WHERE request_id = ANY(%s) OR email_key = ANY(%s)",
        (sorted(keys), sorted(emails)),
    )
    replays: dict[str, Stored] = {}
    taken: set[str] = set()
    for row in await cursor.fetchall():
        if row[7] in keys:
            replays[row[7]] = Stored(_user(row), row[6])
        taken.add(row[8])
    return replays, taken


def _row(insert: Insert) -> tuple[Any, ...]:
    user, new = insert.user, insert.new
    return (
        user.id,
        user.name,
        user.email,
        new.email_key,
        user.age,
        list(user.roles),
        user.created_at,
        new.request_id or None,  # NULLs never collide in a UNIQUE column
        new.fingerprint(),
    )


def _user(row: Sequence[Any]) -> User:
    created: datetime = row[5]
    return User(
        id=row[0],
        name=row[1],
        email=row[2],
        age=row[3],
        roles=tuple(row[4]),
        created_at=created.astimezone(UTC),
    )


def _redacted(url: str) -> str:
    """``url`` with any password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
