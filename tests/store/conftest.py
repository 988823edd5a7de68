"""Fixtures for the store suite: every test runs against SQLite and PostgreSQL.

PostgreSQL: ``MESH_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) names a server and a database
to connect through. The session creates its own throwaway database
``meshdemo_test_<hex>`` there and drops it at the end; every test gets a fresh
schema in it (through ``search_path``), so tests start empty and never see
each other. If the server does not answer, the postgres params are skipped.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from service.store import Store, open_store
from service.store._postgres import PostgresStore
from service.store._sqlite import SQLiteStore

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_server_url() -> str:
    """The server (and database) the suite creates its throwaway database through."""
    return os.environ.get("MESH_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@dataclass(frozen=True)
class Backend:
    """One backend under test: its name, a URL, and a way to build more stores on it."""

    name: str
    url: str

    def store(self, **options: Any) -> SQLiteStore | PostgresStore:
        """A new (not yet opened) store on the same database, with constructor options."""
        if self.name == "sqlite":
            return SQLiteStore(self.url.removeprefix("sqlite:///"), **options)
        return PostgresStore(self.url, **options)

    def count_users(self) -> int:
        """Rows in ``users``, read around the store."""
        return int(self.query("SELECT count(*) FROM users")[0][0])

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) on a fresh connection of the backend's
        own driver, and return its rows (none for a statement that returns none)."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                return list(conn.execute(statement, params).fetchall())
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as pg:
            cursor = pg.execute(statement.replace("?", "%s").encode(), params)
            return list(cursor.fetchall()) if cursor.description else []


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throwaway database for this run, dropped at the end; skip if no server."""
    server = postgres_server_url()
    parts = urlsplit(server)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))  # no secrets
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {shown}: {str(exc).strip()[:200]}"
        if os.environ.get("MESH_TEST_REQUIRE_POSTGRES"):
            pytest.fail(reason + " (MESH_TEST_REQUIRE_POSTGRES is set)")
        pytest.skip(reason)
    name = f"meshdemo_test_{secrets.token_hex(6)}"
    with admin:
        _create_database(admin, name)
        try:
            yield with_database(server, name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _create_database(admin: psycopg.Connection[Any], name: str) -> None:
    """Create ``name``, with a linguistic (ICU en-US) collation where the server has one.

    Then text sorts "a" < "B" < "b" unless the schema asks for byte order, as
    it must for ids; a C-collated test database would hide that mistake.
    """
    ident = sql.Identifier(name)
    try:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu"
                " ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            ).format(ident)
        )
    except psycopg.Error:  # no ICU, or a server older than 15
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))


@pytest.fixture
def postgres_schema_url(postgres_database: str) -> Iterator[str]:
    """A URL whose connections work in a fresh, empty schema of the run's database."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_database, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    options = quote(f"-c search_path={schema}", safe="")
    yield f"{postgres_database}?options={options}"
    with psycopg.connect(postgres_database, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn, on an empty database of its own."""
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'users.db'}")
    return Backend("postgres", request.getfixturevalue("postgres_schema_url"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An opened store from ``open_store(url)``, closed after the test."""
    opened = open_store(backend.url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
