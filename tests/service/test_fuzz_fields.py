"""Property-based fuzzing of every request field of every RPC, on SQLite and PostgreSQL.

Arbitrary text (any unicode but surrogates, control characters, strings of a
few KiB), arbitrary int32 values and arbitrary role numbers: every answer is
OK or a client-error code (never INTERNAL or UNKNOWN), no error message is
longer than 2 KiB or quotes more than 64 characters of the input, and the
replica (real, one per store for the whole module) keeps answering a normal
GetUser within its normal latency.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.domain import MAX_CHAT_TEXT, MAX_EMAIL
from tests.service.fuzz_support import (
    ADMIN,
    FUZZ,
    READER,
    ThreadedReplica,
    assert_clear_refusal,
    assert_still_serving,
    code_of,
    postgres_schema,
    running_replica,
)
from tests.store.conftest import postgres_database

__all__ = ["postgres_database"]  # a fixture, used by name

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_SHORT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
#: Short text, or a short piece repeated into a string of up to 4 KiB.
TEXT = st.one_of(
    _SHORT,
    st.text(st.characters(codec="ascii"), max_size=20),
    st.tuples(_SHORT.filter(bool), st.integers(1, 300)).map(lambda t: (t[0] * t[1])[:4096]),
)
ROLES = st.lists(st.one_of(st.sampled_from([0, 1, 2, 3]), INT32), max_size=6)
#: Valid-looking addresses of every length up to the bound and past it.
EMAILS = st.one_of(
    TEXT,
    st.emails(),
    st.integers(1, MAX_EMAIL).map(lambda n: "e" * n + "@example.com"),
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def replica(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadedReplica]:
    """One replica per store for the whole module: it must survive everything sent."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'users.db'}"
        yield from running_replica(store_url=url)
        return
    for url in postgres_schema(request.getfixturevalue("postgres_database")):
        yield from running_replica(store_url=url)


@pytest.fixture(scope="module")
def channel(replica: ThreadedReplica) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> user_pb2_grpc.UserServiceStub:
    return user_pb2_grpc.UserServiceStub(channel)


def _create_request(
    name: str, email: str, age: int, roles: list[int], request_id: str
) -> user_pb2.CreateUserRequest:
    return user_pb2.CreateUserRequest(
        name=name,
        email=email,
        age=age,
        # Any int32, known role or not: ValueType only names the enum's int.
        roles=[user_pb2.Role.ValueType(role) for role in roles],
        request_id=request_id,
    )


@FUZZ
@given(user_id=TEXT)
def test_get_user_id(stub: user_pb2_grpc.UserServiceStub, user_id: str) -> None:
    try:
        stub.GetUser(user_pb2.GetUserRequest(id=user_id), metadata=READER, timeout=10)
    except grpc.RpcError as err:
        assert_clear_refusal(err, user_id)


@FUZZ
@given(name=TEXT, email=EMAILS, age=INT32, roles=ROLES, request_id=TEXT)
def test_create_user_fields(
    stub: user_pb2_grpc.UserServiceStub,
    name: str,
    email: str,
    age: int,
    roles: list[int],
    request_id: str,
) -> None:
    request = _create_request(name, email, age, roles, request_id)
    for _ in range(2):  # the second time: a replay, or the address is taken
        try:
            reply = stub.CreateUser(request, metadata=ADMIN, timeout=10)
        except grpc.RpcError as err:
            assert_clear_refusal(err, name, email, request_id)
        else:
            # A replay of an earlier example's key may have stored the address in another
            # case: addresses are one user whatever their case (NewUser.email_key).
            assert reply.user.name == name
            assert reply.user.email.casefold() == email.casefold()


@FUZZ
@given(name=TEXT, email=EMAILS, age=INT32)
def test_create_user_as_a_reader(
    stub: user_pb2_grpc.UserServiceStub, name: str, email: str, age: int
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateUser(_create_request(name, email, age, [], ""), metadata=READER, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert_clear_refusal(caught.value, name, email)


@FUZZ
@given(page_size=INT32, page_token=TEXT)
def test_list_users_paging(
    stub: user_pb2_grpc.UserServiceStub, page_size: int, page_token: str
) -> None:
    request = user_pb2.ListUsersRequest(page_size=page_size, page_token=page_token)
    try:
        for _ in stub.ListUsers(request, metadata=READER, timeout=10):
            pass
    except grpc.RpcError as err:
        assert_clear_refusal(err, page_token)


@FUZZ
@given(items=st.lists(st.tuples(TEXT, EMAILS, INT32, ROLES, TEXT), min_size=0, max_size=5))
def test_batch_create_items(
    stub: user_pb2_grpc.UserServiceStub, items: list[tuple[str, str, int, list[int], str]]
) -> None:
    requests = [user_pb2.BatchCreateUsersRequest(user=_create_request(*item)) for item in items]
    try:
        reply = stub.BatchCreateUsers(iter(requests), metadata=ADMIN, timeout=10)
    except grpc.RpcError as err:
        assert_clear_refusal(err, *[text for item in items for text in (item[0], item[1], item[4])])
    else:
        assert [u.name for u in reply.users] == [item[0] for item in items]


@FUZZ
@given(messages=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
def test_chat_messages(
    stub: user_pb2_grpc.UserServiceStub, messages: list[tuple[str, str]]
) -> None:
    requests = [
        user_pb2.ChatRequest(message=user_pb2.ChatMessage(user_id=user_id, text=text))
        for user_id, text in messages
    ]
    echoed: list[str] = []
    try:
        echoed = [
            reply.message.text for reply in stub.Chat(iter(requests), metadata=READER, timeout=10)
        ]
    except grpc.RpcError as err:
        assert_clear_refusal(err, *[text for pair in messages for text in pair])
        assert not all(1 <= len(t) <= MAX_CHAT_TEXT and len(u) <= 64 for u, t in messages)
    else:
        assert echoed == [text for _, text in messages]


def test_zz_still_serving_after_the_fuzzing(channel: grpc.Channel) -> None:
    # Runs last in this module (pytest keeps file order).
    assert_still_serving(channel)


@FUZZ
@given(local=st.integers(65, MAX_EMAIL - 15), request_id=st.integers(65, 128))
def test_conflicts_do_not_quote_long_input(
    stub: user_pb2_grpc.UserServiceStub, local: int, request_id: int
) -> None:
    # A valid address longer than MAX_ECHO, taken; a long request id reused
    # with other fields: both refusals name the input without quoting it whole.
    email = "c" * local + f"{request_id}@example.com"
    key = f"{local}-".ljust(request_id, "k")
    first = _create_request("First", email, 30, [], key)
    created = code_of(lambda: stub.CreateUser(first, metadata=ADMIN, timeout=10))
    assert created in (grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS)  # drawn before
    for again in (
        _create_request("Second", email, 30, [], ""),
        _create_request("Third", email, 31, [], key),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateUser(again, metadata=ADMIN, timeout=10)
        assert_clear_refusal(caught.value, email, key)
