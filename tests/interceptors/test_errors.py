"""Error mapping: ServiceErrors, unexpected exceptions and aborts on all four RPC kinds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.interceptors import INTERNAL_MESSAGE, code_of
from tests.interceptors import servicer as cmd
from tests.interceptors.calls import (
    BIDI_STREAM,
    CLIENT_STREAM,
    KINDS,
    SERVER_STREAM,
    UNARY,
    call,
    full_name,
)
from tests.interceptors.conftest import Harness, admin_md, trailers


def bad_request(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest violations decoded client-side from grpc-status-details-bin."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin on the error"
    assert status.code == err.code().value[0]
    assert status.message == err.details()
    violations: dict[str, str] = {}
    for detail in status.details:
        assert detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
        unpacked = error_details_pb2.BadRequest()
        detail.Unpack(unpacked)
        violations.update({v.field: v.description for v in unpacked.field_violations})
    return violations


EXPECTED_VIOLATIONS = {"name": "must not be empty", "age": "too old"}
# Responses the client gets before a failure injected after two good messages.
BEFORE_FAILURE = {UNARY: 0, SERVER_STREAM: 2, CLIENT_STREAM: 0, BIDI_STREAM: 2}


@pytest.mark.parametrize("kind", KINDS)
async def test_service_error_carries_bad_request_details(harness: Harness, kind: str) -> None:
    outcome = await call(harness.stub, kind, cmd.INVALID, metadata=admin_md())
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.error is not None
    assert outcome.error.details() == "bad user"
    assert bad_request(outcome.error) == EXPECTED_VIOLATIONS
    # Mid-stream failures arrive after the messages already sent; for the
    # client stream the error was raised while reading the request stream.
    assert outcome.responses == BEFORE_FAILURE[kind]


@pytest.mark.parametrize("kind", [SERVER_STREAM])
async def test_error_before_first_stream_item(harness: Harness, kind: str) -> None:
    outcome = await call(harness.stub, kind, f"start:{cmd.INVALID}", metadata=admin_md())
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.responses == 0
    assert outcome.error is not None
    assert bad_request(outcome.error) == EXPECTED_VIOLATIONS


@pytest.mark.parametrize("kind", KINDS)
async def test_unexpected_exception_becomes_internal_without_leaking(
    harness: Harness, kind: str
) -> None:
    outcome = await call(harness.stub, kind, cmd.BOOM, metadata=admin_md())
    assert outcome.code == grpc.StatusCode.INTERNAL
    assert outcome.error is not None
    assert outcome.error.details() == INTERNAL_MESSAGE
    assert "hunter2" not in (outcome.error.debug_error_string() or "")
    status = rpc_status.from_call(outcome.error)  # type: ignore[arg-type]
    assert status is not None
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert list(status.details) == []
    # ...while the full traceback is logged on the server.
    tracebacks = [line for line in harness.logs.lines if "exception" in line]
    assert len(tracebacks) == 1
    assert tracebacks[0]["level"] == "ERROR"
    assert "RuntimeError: secret internals" in tracebacks[0]["exception"]
    assert tracebacks[0]["method"] == full_name(kind)


# Every failure the servicer can produce, and the code the client must see.
FAILURES = {
    cmd.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    cmd.BOOM: grpc.StatusCode.INTERNAL,
    cmd.ABORT: grpc.StatusCode.NOT_FOUND,
    cmd.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    cmd.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    cmd.MISSING: grpc.StatusCode.NOT_FOUND,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", sorted(FAILURES))
async def test_no_unknown_ever_reaches_the_wire(harness: Harness, kind: str, command: str) -> None:
    outcome = await call(harness.stub, kind, command, metadata=admin_md())
    assert outcome.code != grpc.StatusCode.UNKNOWN
    assert outcome.code == FAILURES[command]


async def test_handler_abort_passes_through_untouched(harness: Harness) -> None:
    outcome = await call(harness.stub, UNARY, cmd.ABORT, metadata=admin_md())
    assert outcome.error is not None
    assert outcome.error.details() == "aborted by handler"
    assert rpc_status.from_call(outcome.error) is None  # type: ignore[arg-type]
    assert not [line for line in harness.logs.lines if "exception" in line]


async def test_not_found_details_and_pushback_trailers(harness: Harness) -> None:
    missing = await call(harness.stub, UNARY, cmd.MISSING, metadata=admin_md())
    assert missing.error is not None
    status = rpc_status.from_call(missing.error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("user", "u-1")

    exhausted = await call(harness.stub, SERVER_STREAM, cmd.EXHAUSTED, metadata=admin_md())
    assert exhausted.error is not None
    assert trailers(exhausted.error)["grpc-retry-pushback-ms"] == "250"
    assert exhausted.responses == 2


async def test_set_code_without_raising_is_the_final_code(harness: Harness) -> None:
    outcome = await call(harness.stub, UNARY, cmd.SET_CODE, metadata=admin_md())
    assert outcome.code == grpc.StatusCode.NOT_FOUND
    [line] = await harness.wait_access(1)
    assert line["code"] == "NOT_FOUND"


async def test_undecodable_request_stream_message_is_not_unknown(harness: Harness) -> None:
    # Bytes that are no BatchCreateUsersRequest: the error surfaces while the
    # handler reads the request stream.
    raw = harness.channel.stream_unary(
        "/meshdemo.v1.UserService/BatchCreateUsers",
        request_serializer=lambda message: message,
        response_deserializer=lambda data: data,
    )

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(garbage(), metadata=admin_md(), timeout=10)
    # Decoding is deferred into the hook wrapper: the bad message is a
    # client error (no traceback, no INTERNAL), and it names no parser class.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "meshdemo.v1.BatchCreateUsersRequest" in details
    assert "DecodeError" not in details


class _FakeContext:
    """Just the two context methods code_of reads."""

    def __init__(self, code: grpc.StatusCode | None = None, remaining: float | None = None):
        self._code = code
        self._remaining = remaining

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("exc", "context", "expected"),
    [
        (None, _FakeContext(), grpc.StatusCode.OK),
        (None, _FakeContext(grpc.StatusCode.NOT_FOUND), grpc.StatusCode.NOT_FOUND),
        (cmd.invalid(), _FakeContext(), grpc.StatusCode.INVALID_ARGUMENT),
        (grpc.aio.AbortError(), _FakeContext(grpc.StatusCode.ABORTED), grpc.StatusCode.ABORTED),
        (grpc.aio.AbortError(), _FakeContext(), grpc.StatusCode.INTERNAL),
        (asyncio.CancelledError(), _FakeContext(), grpc.StatusCode.CANCELLED),
        (asyncio.CancelledError(), _FakeContext(remaining=3.0), grpc.StatusCode.CANCELLED),
        (asyncio.CancelledError(), _FakeContext(remaining=0.0), grpc.StatusCode.DEADLINE_EXCEEDED),
        # The client's own deadline cancel, arriving just before the server's copy of it.
        (asyncio.CancelledError(), _FakeContext(remaining=0.01), grpc.StatusCode.DEADLINE_EXCEEDED),
        (asyncio.CancelledError(), _FakeContext(remaining=0.2), grpc.StatusCode.CANCELLED),
        (GeneratorExit(), _FakeContext(), grpc.StatusCode.CANCELLED),
        (NotImplementedError(), _FakeContext(), grpc.StatusCode.UNIMPLEMENTED),
        (RuntimeError("x"), _FakeContext(grpc.StatusCode.NOT_FOUND), grpc.StatusCode.INTERNAL),
        (KeyError("x"), _FakeContext(), grpc.StatusCode.INTERNAL),
    ],
)
def test_code_of_classification(
    exc: BaseException | None, context: _FakeContext, expected: grpc.StatusCode
) -> None:
    assert code_of(exc, context) == expected  # type: ignore[arg-type]
