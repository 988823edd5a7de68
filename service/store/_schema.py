"""The ordered schema migrations both backends apply at ``open()``.

A migration is applied once per database: ``schema_migrations`` records the
versions already applied, and the backend runs the pending ones inside one
transaction that also holds a database-wide lock (PostgreSQL
``pg_advisory_xact_lock``, SQLite ``BEGIN IMMEDIATE``), so replicas that start
at the same moment apply each migration exactly once and the losers see the
winner's versions.

Invariants:
- versions are positive, strictly increasing, and never renumbered or edited
  once released: a change to the schema is a new migration appended at the end;
- every migration carries the statements of both dialects, and the two
  dialects describe the same columns (types differ where the engines differ:
  ``roles`` is a JSON text in SQLite and ``text[]`` in PostgreSQL,
  ``created_at`` is integer microseconds since the epoch in SQLite and
  ``timestamptz`` in PostgreSQL, and PostgreSQL compares ids with the
  ``"C"`` collation so that both order them byte by byte).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ADVISORY_LOCK_KEY",
    "MIGRATIONS",
    "MIGRATIONS_TABLE_POSTGRES",
    "MIGRATIONS_TABLE_SQLITE",
    "Migration",
    "pending",
]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step, in the words of each dialect."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


#: Key of the PostgreSQL advisory lock that serializes migrations (any
#: constant works; this one spells "meshdemo" in ASCII).
ADVISORY_LOCK_KEY = 0x6D65736864656D6F

MIGRATIONS_TABLE_SQLITE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at INTEGER NOT NULL)"
)

MIGRATIONS_TABLE_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY,"
    " description text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="users with unique email_key and idempotency request_id",
        sqlite=(
            "CREATE TABLE users ("
            " id TEXT PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " email TEXT NOT NULL,"
            " email_key TEXT NOT NULL,"
            " age INTEGER NOT NULL,"
            " roles TEXT NOT NULL,"
            " created_at INTEGER NOT NULL,"
            " request_id TEXT,"
            " request_fingerprint TEXT,"
            " CONSTRAINT users_email_key_key UNIQUE (email_key),"
            " CONSTRAINT users_request_id_key UNIQUE (request_id)"
            ") WITHOUT ROWID",
        ),
        postgres=(
            "CREATE TABLE users ("
            # Byte order, as SQLite and Python sort: ids list in creation
            # order whatever the database's locale.
            ' id text COLLATE "C" PRIMARY KEY,'
            " name text NOT NULL,"
            " email text NOT NULL,"
            " email_key text NOT NULL,"
            " age integer NOT NULL,"
            " roles text[] NOT NULL,"
            " created_at timestamptz NOT NULL,"
            " request_id text,"
            " request_fingerprint text,"
            " CONSTRAINT users_email_key_key UNIQUE (email_key),"
            " CONSTRAINT users_request_id_key UNIQUE (request_id)"
            ")",
        ),
    ),
)


def pending(applied: Iterable[int]) -> list[Migration]:
    """The migrations not in ``applied``, in version order."""
    done = set(applied)
    return [m for m in MIGRATIONS if m.version not in done]


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise AssertionError(f"migration versions must be positive and increasing: {versions}")


_check_order(MIGRATIONS)
