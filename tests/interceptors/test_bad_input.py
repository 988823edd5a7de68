"""Request bytes that do not decode, sent through generic (raw-bytes) calls.

The chain defers decoding into the hook wrapper: auth answers first, then the
bad message is INVALID_ARGUMENT, logged, counted and traced like any call,
with no traceback, on all four kinds and in the middle of request streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshdemo.v1 import user_pb2
from service.errors import MalformedRequest
from service.interceptors import DeferredDecoding
from tests.interceptors.calls import (
    BIDI_STREAM,
    CLIENT_STREAM,
    KINDS,
    METHOD_OF,
    SERVER_STREAM,
    SERVICE,
    UNARY,
    full_name,
)
from tests.interceptors.conftest import Harness, admin_md, reader_md

STATUS_ATTR = "rpc.grpc.status_code"

#: A field 1 of wire type 7 (no such type): no message parses it.
GARBAGE = b"\x0f\xff\xff\xff"
#: Field 1 declared 10 bytes long, 2 bytes present.
TRUNCATED = b"\x0a\x0a\x61\x62"
#: A proto3 string field of each kind's request holding bytes that are not UTF-8:
#: GetUserRequest.id, ListUsersRequest.page_token, BatchCreateUsersRequest.user.name,
#: ChatRequest.message.text.
BAD_UTF8 = {
    UNARY: b"\x0a\x02\xff\xfe",
    SERVER_STREAM: b"\x12\x02\xff\xfe",
    CLIENT_STREAM: b"\x0a\x04\x0a\x02\xff\xfe",
    BIDI_STREAM: b"\x0a\x04\x12\x02\xff\xfe",
}
BODIES = {"garbage": GARBAGE, "truncated": TRUNCATED}


def _raw_unary(channel: grpc.aio.Channel, kind: str) -> grpc.aio.UnaryUnaryMultiCallable:
    # No serializers: the bytes go on the wire as they are.
    return channel.unary_unary(full_name(kind), None, None)


async def _send(
    harness: Harness,
    kind: str,
    messages: Sequence[bytes],
    metadata: tuple[tuple[str, str], ...],
    *,
    refused: bool = False,
) -> tuple[int, grpc.aio.AioRpcError]:
    """Send ``messages`` raw on a call of ``kind``; the responses seen and the error.

    Request streams then stay open, sending nothing more, until the call is
    over (with ``refused``, from the start): a grpc.aio client writing to a
    call the server has ended reports INTERNAL from that write instead of the
    server's status.
    """
    done = asyncio.Event()
    try:
        return await _send_raw(harness.channel, kind, messages, metadata, done, refused)
    finally:
        done.set()


async def _send_raw(
    channel: grpc.aio.Channel,
    kind: str,
    messages: Sequence[bytes],
    metadata: tuple[tuple[str, str], ...],
    done: asyncio.Event,
    refused: bool,
) -> tuple[int, grpc.aio.AioRpcError]:
    received = 0

    async def requests() -> AsyncIterator[bytes]:
        if refused:
            await done.wait()
        for message in messages:
            yield message
        await done.wait()

    # No serializers (None, None) on any of these: the bytes go on the wire as they are.
    try:
        if kind == UNARY:
            await channel.unary_unary(full_name(kind), None, None)(
                messages[0], metadata=metadata, timeout=10
            )
        elif kind == SERVER_STREAM:
            async for _ in channel.unary_stream(full_name(kind), None, None)(
                messages[0], metadata=metadata, timeout=10
            ):
                received += 1
        elif kind == CLIENT_STREAM:
            await channel.stream_unary(full_name(kind), None, None)(
                requests(), metadata=metadata, timeout=10
            )
        else:
            async for _ in channel.stream_stream(full_name(kind), None, None)(
                requests(), metadata=metadata, timeout=10
            ):
                received += 1
    except grpc.aio.AioRpcError as err:
        return received, err
    raise AssertionError("the call succeeded")


def _no_traceback(caplog: pytest.LogCaptureFixture, harness: Harness) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not [line for line in harness.logs.lines if "exc_info" in line or "traceback" in line]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("body", ["garbage", "truncated", "utf8"])
async def test_undecodable_request_is_invalid_argument_logged_counted_traced(
    harness: Harness, kind: str, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raw = BAD_UTF8[kind] if body == "utf8" else BODIES[body]
    _, err = await _send(harness, kind, [raw], admin_md())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    assert details.startswith("the request is not a valid meshdemo.v1.")
    assert "Error" not in details and "google.protobuf" not in details
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "MALFORMED_REQUEST"

    [line] = await harness.wait_access(1)
    assert (line["code"], line["method"], line["sub"]) == (
        "INVALID_ARGUMENT",
        full_name(kind),
        "alice",
    )
    [span] = await harness.wait_spans(1)
    assert span.attributes is not None
    assert span.attributes[STATUS_ATTR] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    labels = {"grpc_service": SERVICE, "grpc_method": METHOD_OF[kind], "grpc_type": kind}
    assert harness.sample("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT") == 1
    if kind in (UNARY, SERVER_STREAM):
        # The handler never ran: there was no message to give it.
        assert harness.servicer.seen.principals == []
    _no_traceback(caplog, harness)


@pytest.mark.parametrize("kind", KINDS)
async def test_unauthenticated_garbage_gets_unauthenticated(harness: Harness, kind: str) -> None:
    _, err = await _send(harness, kind, [GARBAGE], (), refused=True)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    [line] = await harness.wait_access(1)
    assert line["code"] == "UNAUTHENTICATED"


async def test_refused_role_comes_before_decoding(harness: Harness) -> None:
    # A reader may not write: the refusal wins over the undecodable batch.
    _, err = await _send(harness, CLIENT_STREAM, [GARBAGE], reader_md(), refused=True)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_message_mid_chat_ends_the_stream(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="hi")).SerializeToString()
    received, err = await _send(
        harness, BIDI_STREAM, [good, good, BAD_UTF8[BIDI_STREAM]], admin_md()
    )

    assert received == 2
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(message 2 of the stream)" in (err.details() or "")
    [line] = await harness.wait_access(1)
    assert (line["code"], line["requests"], line["responses"]) == ("INVALID_ARGUMENT", 3, 2)
    _no_traceback(caplog, harness)


async def test_bad_message_mid_batch_ends_the_call(harness: Harness) -> None:
    good = user_pb2.BatchCreateUsersRequest(
        user=user_pb2.CreateUserRequest(name="ok")
    ).SerializeToString()
    _, err = await _send(harness, CLIENT_STREAM, [good, TRUNCATED], admin_md())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(message 1 of the stream)" in (err.details() or "")
    [line] = await harness.wait_access(1)
    assert line["requests"] == 2


async def test_good_requests_still_decode(harness: Harness) -> None:
    body = user_pb2.GetUserRequest(id="u-1").SerializeToString()
    reply = await _raw_unary(harness.channel, UNARY)(body, metadata=admin_md(), timeout=10)
    # The test servicer answers GetUser(id) with a user of id "id-<id>".
    assert user_pb2.GetUserResponse.FromString(reply).user.id == "id-u-1"


async def test_exempt_methods_decode_late_too(harness: Harness) -> None:
    # Health is outside auth (and tracing): the next layer in takes decoding.
    check = harness.channel.unary_unary("/grpc.health.v1.Health/Check", None, None)  # raw bytes
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(GARBAGE, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in (caught.value.details() or "")
    [line] = await harness.wait_access(1)
    assert line["code"] == "INVALID_ARGUMENT"


async def test_deferred_decoding_alone() -> None:
    decoding = DeferredDecoding(user_pb2.GetUserRequest.FromString)
    body = user_pb2.GetUserRequest(id="u-1").SerializeToString()
    assert decoding(body) is body  # what grpc calls: the bytes, untouched
    assert decoding.one(body) == user_pb2.GetUserRequest(id="u-1")
    decoded = user_pb2.GetUserRequest(id="u-2")
    assert decoding.one(decoded) is decoded
    with pytest.raises(MalformedRequest, match=r"not a valid meshdemo\.v1\.GetUserRequest"):
        decoding.one(GARBAGE)

    async def frames() -> AsyncIterator[bytes]:
        yield body
        yield TRUNCATED

    seen = []
    with pytest.raises(MalformedRequest) as caught:
        async for message in decoding.stream(frames()):
            seen.append(message.id)
    assert seen == ["u-1"] and "(message 1 of the stream)" in caught.value.message
    assert DeferredDecoding(lambda raw: raw).type_name == "request message"
