"""Malformed and oversized input on the wire, against one real replica.

Arbitrary bytes and truncated messages go out through generic calls (no
serializers, so the bytes travel as they are) on all four RPC kinds: signed
in, the answer is OK or a client-error code, never INTERNAL or UNKNOWN;
without a token it is UNAUTHENTICATED. A message above the server's receive
limit gets grpc's own RESOURCE_EXHAUSTED, metadata above grpc's limit is
refused, a long Chat is answered message for message, and after each group
the replica still answers a normal GetUser within its normal latency.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshdemo.v1 import user_pb2, user_pb2_grpc
from tests.service.fuzz_support import (
    ADMIN,
    CLIENT_ERRORS,
    FUZZ,
    READER,
    ThreadedReplica,
    assert_clear_refusal,
    assert_still_serving,
    code_of,
    running_replica,
)

_SERVICE = "/meshdemo.v1.UserService/"
#: grpc's default receive limit, which the service keeps.
MAX_RECEIVE = 4 * 1024 * 1024
#: grpc's default limit on a call's metadata (grpc.max_metadata_size).
MAX_METADATA = 8 * 1024

#: A valid request of each method, serialized: truncations of it are fuzzed.
VALID = {
    "GetUser": user_pb2.GetUserRequest(id="01HZZZZZZZZZZZZZZZZZZZZZZZ"),
    "CreateUser": user_pb2.CreateUserRequest(
        name="Ada", email="ada@example.com", age=36, roles=[user_pb2.ROLE_USER], request_id="r-1"
    ),
    "ListUsers": user_pb2.ListUsersRequest(page_size=5, page_token="djE6MDFI"),
    "BatchCreateUsers": user_pb2.BatchCreateUsersRequest(
        user=user_pb2.CreateUserRequest(name="Bob", email="bob@example.com", age=40)
    ),
    "Chat": user_pb2.ChatRequest(message=user_pb2.ChatMessage(user_id="u1", text="hello")),
}
METHODS = sorted(VALID)
#: Random bytes, and bytes that look like protobuf: tags, lengths, bad UTF-8.
_TOKENS = st.sampled_from([b"\x0a", b"\x12", b"\x1a", b"\x20", b"\xff", b"\x80", b"\x0f", b"\x00"])
BODIES = st.one_of(
    st.binary(max_size=64),
    st.lists(st.one_of(_TOKENS, st.binary(max_size=3)), max_size=24).map(b"".join),
)


@pytest.fixture(scope="module")
def replica() -> Iterator[ThreadedReplica]:
    yield from running_replica()


@pytest.fixture(scope="module")
def channel(replica: ThreadedReplica) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.address) as ch:
        yield ch


def _raw_call(
    channel: grpc.Channel,
    method: str,
    bodies: list[bytes],
    metadata: tuple[tuple[str, str], ...] | None,
) -> None:
    """Send ``bodies`` (one for unary requests) as they are; consume every response.

    No serializers (``None``): the bytes go out and come back as they are.
    """
    path = _SERVICE + method
    md = metadata
    if method in ("GetUser", "CreateUser"):
        channel.unary_unary(path, None, None)(bodies[0], metadata=md, timeout=10)
    elif method == "ListUsers":
        for _ in channel.unary_stream(path, None, None)(bodies[0], metadata=md, timeout=10):
            pass
    elif method == "BatchCreateUsers":
        channel.stream_unary(path, None, None)(iter(bodies), metadata=md, timeout=10)
    else:
        for _ in channel.stream_stream(path, None, None)(iter(bodies), metadata=md, timeout=10):
            pass


def _metadata_for(method: str) -> tuple[tuple[str, str], ...]:
    return ADMIN if "Create" in method else READER


@FUZZ
@given(method=st.sampled_from(METHODS), bodies=st.lists(BODIES, min_size=1, max_size=3))
def test_arbitrary_bytes_signed_in(channel: grpc.Channel, method: str, bodies: list[bytes]) -> None:
    try:
        _raw_call(channel, method, bodies, _metadata_for(method))
    except grpc.RpcError as err:
        assert_clear_refusal(err)


@FUZZ
@given(method=st.sampled_from(METHODS), bodies=st.lists(BODIES, min_size=1, max_size=3))
def test_arbitrary_bytes_without_a_token(
    channel: grpc.Channel, method: str, bodies: list[bytes]
) -> None:
    code = code_of(lambda: _raw_call(channel, method, bodies, None))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data())
def test_truncated_messages(channel: grpc.Channel, method: str, data: st.DataObject) -> None:
    whole = VALID[method].SerializeToString()
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    # On request streams the cut message follows a good one: mid-stream.
    bodies = [whole, whole[:cut]] if method in ("BatchCreateUsers", "Chat") else [whole[:cut]]
    code = code_of(lambda: _raw_call(channel, method, bodies, _metadata_for(method)))
    assert code in CLIENT_ERRORS | {grpc.StatusCode.OK}, code


def test_a_bad_utf8_string_is_invalid_argument(channel: grpc.Channel) -> None:
    # GetUserRequest.id holding 0xff 0xfe: valid protobuf, not a valid proto3 string.
    code = code_of(lambda: _raw_call(channel, "GetUser", [b"\x0a\x02\xff\xfe"], READER))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(channel)


def test_still_serving_after_malformed_bytes(channel: grpc.Channel) -> None:
    assert_still_serving(channel)


def test_a_message_over_the_receive_limit_is_resource_exhausted(channel: grpc.Channel) -> None:
    stub = user_pb2_grpc.UserServiceStub(channel)
    huge = user_pb2.GetUserRequest(id="x" * (MAX_RECEIVE + 1024))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetUser(huge, metadata=READER, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Refused by grpc before any of our code: the message says so, not the id.
    assert "x" * 65 not in (caught.value.details() or "")
    assert_still_serving(channel)


def test_an_oversized_message_mid_stream_ends_only_that_call(channel: grpc.Channel) -> None:
    stub = user_pb2_grpc.UserServiceStub(channel)
    small = user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="hi"))
    huge = user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="y" * (MAX_RECEIVE + 1024)))
    code = code_of(lambda: list(stub.Chat(iter([small, huge]), metadata=READER, timeout=10)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(channel)


def test_metadata_over_the_limit_is_refused(channel: grpc.Channel) -> None:
    stub = user_pb2_grpc.UserServiceStub(channel)
    padded = (*READER, ("x-padding", "p" * (2 * MAX_METADATA)))
    code = code_of(
        lambda: stub.GetUser(user_pb2.GetUserRequest(id="01NOPE"), metadata=padded, timeout=10)
    )
    # Refused by grpc's metadata limit, never served or left hanging.
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(channel)


def test_many_metadata_entries_are_refused(channel: grpc.Channel) -> None:
    stub = user_pb2_grpc.UserServiceStub(channel)
    crowded = (*READER, *((f"x-k{i}", "v" * 32) for i in range(1000)))
    code = code_of(
        lambda: stub.GetUser(user_pb2.GetUserRequest(id="01NOPE"), metadata=crowded, timeout=10)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(channel)


def test_a_long_chat_is_answered_message_for_message(channel: grpc.Channel) -> None:
    stub = user_pb2_grpc.UserServiceStub(channel)
    count = 2000
    requests = (
        user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=f"m{i}")) for i in range(count)
    )
    replies = [r.message.text for r in stub.Chat(requests, metadata=READER, timeout=30)]
    assert replies == [f"m{i}" for i in range(count)]
    assert_still_serving(channel)
