"""Strings with SQL metacharacters and control characters, stored and read back verbatim.

Each goes in through CreateUser (name, e-mail, request id) on a real replica
over SQLite and over PostgreSQL, and comes back unchanged through GetUser and
ListUsers; a replay with the same request id returns the same user. NUL, which
PostgreSQL text cannot hold, is refused with INVALID_ARGUMENT on every store
(it was INTERNAL on PostgreSQL).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.domain import MAX_NAME, encode_page_token
from tests.service.fuzz_support import (
    ADMIN,
    FUZZ,
    READER,
    ThreadedReplica,
    assert_still_serving,
    running_replica,
)
from tests.store.conftest import postgres_database, postgres_schema_url

__all__ = ["postgres_database", "postgres_schema_url"]  # fixtures used by name

NASTY = [
    "'; DROP TABLE users; --",
    'Robert"); DROP TABLE users;--',
    "1' OR '1'='1",
    "%_\\%\\_ LIKE wildcards",
    "$1 $$ dollar $$ quoting",
    "semi;colon\\backslash",
    "tab\there\nnewline\rreturn",
    "\x1b[31mred\x1b[0m \x07bell \x7fdel",
    "\u202eRTL override\u202c \u200fmark\u200e",
    "emoji 👩\u200d💻 🏳\ufe0f\u200d🌈",
    "e\u0301 combining, \ufeffBOM, \u2028line sep",
    "日本語 العربية עברית",
    "quote ' double \" back `",
    "  leading and trailing spaces  ",
]
#: Local parts the address check allows, carrying SQL metacharacters.
NASTY_EMAILS = [
    "o'brien@example.com",
    "drop'--table@example.com",
    "%_like*@example.com",
    "a+b=c?d^e{f}|g~h@example.com",
    "`$#!&/@example.com",
]
_numbers = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadedReplica]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'users.db'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    yield from running_replica(store_url=url)


@pytest.fixture
def stub(replica: ThreadedReplica) -> Iterator[user_pb2_grpc.UserServiceStub]:
    with grpc.insecure_channel(replica.address) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)
        assert_still_serving(channel)


def _listed(stub: user_pb2_grpc.UserServiceStub) -> dict[str, user_pb2.User]:
    request = user_pb2.ListUsersRequest(page_size=1000)
    return {r.user.id: r.user for r in stub.ListUsers(request, metadata=READER, timeout=10)}


def _round_trip(stub: user_pb2_grpc.UserServiceStub, name: str, email: str, key: str) -> None:
    """Create, replay, then read back by id and by listing: every string verbatim."""
    request = user_pb2.CreateUserRequest(name=name, email=email, age=30, request_id=key)
    created = stub.CreateUser(request, metadata=ADMIN, timeout=10).user
    assert (created.name, created.email) == (name, email)
    replayed = stub.CreateUser(request, metadata=ADMIN, timeout=10).user
    assert replayed.id == created.id
    got = stub.GetUser(user_pb2.GetUserRequest(id=created.id), metadata=READER, timeout=10).user
    assert (got.name, got.email) == (name, email)
    listed = _listed(stub)[created.id]
    assert (listed.name, listed.email) == (name, email)


def test_sql_and_control_characters_round_trip(stub: user_pb2_grpc.UserServiceStub) -> None:
    for i, name in enumerate(NASTY):
        email = NASTY_EMAILS[i % len(NASTY_EMAILS)].replace("@", f"{i}@")
        _round_trip(stub, name, email, key=f"{name}#{i}")
    # Still one table, holding exactly what went in.
    assert sorted(u.name for u in _listed(stub).values()) == sorted(NASTY)


def test_a_nul_character_is_refused_on_every_store(stub: user_pb2_grpc.UserServiceStub) -> None:
    # PostgreSQL text cannot hold NUL; SQLite could, but the contract is one.
    for field in ("name", "request_id"):
        n = next(_numbers)
        values = {"name": f"nul {n}", "request_id": f"key {n}", field: f"a\x00b {n}"}
        request = user_pb2.CreateUserRequest(
            name=values["name"],
            email=f"nul{n}@example.com",
            age=30,
            request_id=values["request_id"],
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateUser(request, metadata=ADMIN, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "")
    for lookup in ("a\x00b", "\x00"):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUser(user_pb2.GetUserRequest(id=lookup), metadata=READER, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    token = encode_page_token("01H\x00X")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ListUsers(user_pb2.ListUsersRequest(page_token=token), metadata=READER))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=MAX_NAME,
)


@settings(FUZZ, max_examples=25)
@given(name=TEXT.filter(str.strip), key=TEXT)
def test_any_name_and_request_id_round_trip(
    stub: user_pb2_grpc.UserServiceStub, name: str, key: str
) -> None:
    n = next(_numbers)
    _round_trip(stub, name, f"any{n}@example.com", key=f"{n}:{key}"[:128])
