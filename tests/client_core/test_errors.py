"""from_rpc_error: codes to classes, google.rpc details decoded, and nothing ever crashes it.

The first half builds real ``grpc.aio.AioRpcError`` objects by hand (exact control
of odd inputs); the second half gets them from a real grpc.aio server on loopback,
where the service's own error classes put the details on the wire.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from client._errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    error_class,
    from_rpc_error,
    rpc_code,
    rpc_message,
    rpc_trailing_metadata,
)
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service import errors as service_errors

from .fakes import rpc_error
from .server import Behaviour, abort_rich, rich_status, running
from .strategies import PROPERTY

DETAILS_KEY = "grpc-status-details-bin"

EXPECTED_CLASS: dict[grpc.StatusCode, type[MeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def with_status(
    status: status_pb2.Status, code: grpc.StatusCode | None = None, message: str | None = None
) -> grpc.aio.AioRpcError:
    """An error carrying ``status`` in grpc-status-details-bin (code/message may disagree)."""
    return rpc_error(
        code if code is not None else grpc.StatusCode(_code(status.code)),
        status.message if message is None else message,
        [(DETAILS_KEY, status.SerializeToString())],
    )


def _code(number: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == number)


def bad_request(*pairs: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in pairs
        ]
    )


# -- Codes -------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_code_maps_to_its_class(code: grpc.StatusCode) -> None:
    err = rpc_error(code, f"failed with {code.name}")
    mapped = from_rpc_error(err)
    assert type(mapped) is EXPECTED_CLASS.get(code, MeshError)
    assert isinstance(mapped, MeshError)
    assert mapped.code is code
    assert mapped.message == f"failed with {code.name}"
    assert mapped.details == ()
    assert mapped.__cause__ is err


def test_each_class_names_its_code() -> None:
    for code, cls in EXPECTED_CLASS.items():
        assert cls.code is code
        assert error_class(code) is cls
    assert MeshError.code is grpc.StatusCode.UNKNOWN


def test_all_sixteen_non_ok_codes_have_their_own_class() -> None:
    non_ok = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
    assert len(non_ok) == 16
    assert set(EXPECTED_CLASS) == set(non_ok)
    assert len({error_class(code) for code in non_ok}) == 16
    assert error_class(grpc.StatusCode.OK) is MeshError


def test_a_code_is_registered_once() -> None:
    with pytest.raises(TypeError, match="NOT_FOUND"):

        class AnotherNotFound(MeshError, code=grpc.StatusCode.NOT_FOUND):
            pass

    with pytest.raises(TypeError, match="OK"):

        class Fine(MeshError, code=grpc.StatusCode.OK):
            pass

    assert error_class(grpc.StatusCode.NOT_FOUND) is NotFoundError


def test_a_users_subclass_keeps_its_parents_code_and_mapping() -> None:
    class MissingUser(NotFoundError):
        pass

    assert MissingUser("u-1").code is grpc.StatusCode.NOT_FOUND
    assert error_class(grpc.StatusCode.NOT_FOUND) is NotFoundError


def test_a_bare_rpc_error_maps_to_unknown() -> None:
    err = grpc.RpcError("no status at all")
    mapped = from_rpc_error(err)
    assert type(mapped) is UnknownError
    assert mapped.code is grpc.StatusCode.UNKNOWN
    assert mapped.message == "no status at all"
    assert mapped.trailing_metadata == ()


class BrokenError(grpc.RpcError):
    """An RpcError whose accessors misbehave in every way they can."""

    def code(self) -> grpc.StatusCode:
        raise RuntimeError("no code")

    def details(self) -> str | None:
        return None

    def trailing_metadata(self) -> tuple[object, ...]:  # type: ignore[override]
        return (("ok-key", "ok"), ("lonely",), (1, "int-key"), ("k", 3.5), "junk")


def test_a_broken_error_still_maps() -> None:
    mapped = from_rpc_error(BrokenError())
    assert mapped.code is grpc.StatusCode.UNKNOWN
    assert mapped.message == ""
    assert mapped.trailing_metadata == (("ok-key", "ok"),)


def test_readers_on_a_wrong_code_type() -> None:
    class OddError(grpc.RpcError):
        def code(self) -> object:  # type: ignore[override]
            return 14

        def trailing_metadata(self) -> None:  # type: ignore[override]
            return None

    assert rpc_code(OddError()) is grpc.StatusCode.UNKNOWN
    assert rpc_trailing_metadata(OddError()) == ()
    assert rpc_message(OddError()) == str(OddError())


def test_str_and_repr() -> None:
    mapped = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "user 'u1' not found"))
    assert str(mapped) == "NOT_FOUND: user 'u1' not found"
    assert repr(mapped) == "NotFoundError(code=NOT_FOUND, message=\"user 'u1' not found\")"


def test_a_mesh_error_can_be_built_directly() -> None:
    err = NotFoundError("gone")
    assert (err.code, err.message, err.details, err.trailing_metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "gone",
        (),
        (),
    )
    assert MeshError("x", code=grpc.StatusCode.ABORTED).code is grpc.StatusCode.ABORTED


# -- Details -----------------------------------------------------------------------


def test_bad_request_field_violations_are_decoded() -> None:
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 invalid fields",
        [bad_request(("email", "not an address"), ("age", "must be 0..150"))],
    )
    mapped = from_rpc_error(with_status(status))
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field_violations == (
        FieldViolation("email", "not an address"),
        FieldViolation("age", "must be 0..150"),
    )
    assert mapped.field_violations[0] == ("email", "not an address")  # plain pairs too


def test_violations_of_several_bad_requests_are_concatenated_in_order() -> None:
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        [bad_request(("a", "1")), error_details_pb2.ErrorInfo(reason="R"), bad_request(("b", "2"))],
    )
    mapped = from_rpc_error(with_status(status))
    assert isinstance(mapped, InvalidArgumentError)
    assert [v.field for v in mapped.field_violations] == ["a", "b"]
    assert [type(d).__name__ for d in mapped.details] == ["BadRequest", "ErrorInfo", "BadRequest"]


def test_invalid_argument_without_details_has_no_violations() -> None:
    mapped = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field_violations == ()


def test_detail_and_retry_delay() -> None:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1500)
    resource = error_details_pb2.ResourceInfo(resource_type="user", resource_name="u1")
    status = rich_status(grpc.StatusCode.UNAVAILABLE, "later", [resource, info])
    mapped = from_rpc_error(with_status(status))
    assert mapped.retry_delay == 1.5
    assert mapped.detail(error_details_pb2.ResourceInfo) == resource
    assert mapped.detail(error_details_pb2.BadRequest) is None


def test_retry_delay_is_none_without_retry_info_or_its_delay() -> None:
    assert from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE)).retry_delay is None
    status = rich_status(grpc.StatusCode.UNAVAILABLE, "x", [error_details_pb2.RetryInfo()])
    assert from_rpc_error(with_status(status)).retry_delay is None


def test_details_of_another_code_are_not_trusted() -> None:
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", [bad_request(("a", "1"))])
    mapped = from_rpc_error(with_status(status, code=grpc.StatusCode.INTERNAL))
    assert type(mapped) is InternalError
    assert mapped.details == ()


def test_a_different_message_in_the_status_is_tolerated() -> None:
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "inner", [bad_request(("a", "1"))])
    mapped = from_rpc_error(with_status(status, message="outer"))
    assert mapped.message == "outer"
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field_violations == (("a", "1"),)


def test_an_unknown_detail_type_is_kept_packed() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/acme.v9.Mystery", value=b"\x08\x01")
    status = rich_status(grpc.StatusCode.INTERNAL, "x", [unknown, error_details_pb2.ErrorInfo()])
    mapped = from_rpc_error(with_status(status))
    assert mapped.details[0] == unknown
    assert isinstance(mapped.details[1], error_details_pb2.ErrorInfo)


def test_a_known_detail_type_with_broken_bytes_is_kept_packed() -> None:
    broken = any_pb2.Any(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"\xff\xff")
    status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, "x", [broken])
    mapped = from_rpc_error(with_status(status))
    assert mapped.details == (broken,)
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field_violations == ()


@pytest.mark.parametrize("garbage", [b"\xff\x00garbage", b"\x0a", b"\x08\x96\x01\x1a\x05"])
def test_garbage_details_do_not_crash_and_keep_the_rest(garbage: bytes) -> None:
    err = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        "down",
        [(DETAILS_KEY, garbage), ("grpc-retry-pushback-ms", "100")],
    )
    mapped = from_rpc_error(err)
    assert type(mapped) is UnavailableError
    assert (mapped.message, mapped.details) == ("down", ())
    assert ("grpc-retry-pushback-ms", "100") in mapped.trailing_metadata


@PROPERTY
@given(garbage=st.binary(max_size=64), code=st.sampled_from(list(grpc.StatusCode)))
def test_any_bytes_in_the_details_never_crash(garbage: bytes, code: grpc.StatusCode) -> None:
    mapped = from_rpc_error(rpc_error(code, "m", [(DETAILS_KEY, garbage)]))
    assert mapped.code is code
    assert isinstance(mapped, EXPECTED_CLASS.get(code, MeshError))


def test_a_text_value_for_the_binary_key_is_ignored() -> None:
    mapped = from_rpc_error(BrokenTextDetails())
    assert mapped.details == ()
    assert mapped.code is grpc.StatusCode.INVALID_ARGUMENT


class BrokenTextDetails(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "bad"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ((DETAILS_KEY, "not bytes"),)


# -- Over the wire: a real grpc.aio server -----------------------------------------


def raising(error: service_errors.ServiceError) -> Behaviour:
    """A behaviour that aborts with a service error, as the service's interceptor would."""

    async def behaviour(context: grpc.aio.ServicerContext[object, object], count: int) -> None:
        await abort_rich(context, error.to_status_proto(), error.trailing_metadata)

    return behaviour


def aborting(
    code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str | bytes], ...] = ()
) -> Behaviour:
    """A behaviour that aborts with a plain status (no details unless in ``trailing``)."""

    async def behaviour(context: grpc.aio.ServicerContext[object, object], count: int) -> None:
        await context.abort(code, message, trailing)

    return behaviour


async def failure(behaviour: Behaviour) -> grpc.aio.AioRpcError:
    async with running({"x": behaviour}) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await server.get_user("x")
    return info.value


async def test_wire_bad_request_maps_with_field_violations() -> None:
    error = service_errors.InvalidArgument(
        "2 invalid fields",
        [
            service_errors.FieldViolation("email", "not an e-mail address"),
            service_errors.FieldViolation("roles[1]", "unknown role"),
        ],
    )
    mapped = from_rpc_error(await failure(raising(error)))
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.message == "2 invalid fields"
    assert mapped.field_violations == (
        ("email", "not an e-mail address"),
        ("roles[1]", "unknown role"),
    )


async def test_wire_not_found_carries_resource_info() -> None:
    mapped = from_rpc_error(await failure(raising(service_errors.NotFound("user", "u-42"))))
    assert isinstance(mapped, NotFoundError)
    info = mapped.detail(error_details_pb2.ResourceInfo)
    assert info is not None
    assert (info.resource_type, info.resource_name) == ("user", "u-42")


async def test_wire_unavailable_carries_retry_info_and_pushback() -> None:
    err = await failure(raising(service_errors.Unavailable("draining", retry_after_ms=250)))
    mapped = from_rpc_error(err)
    assert isinstance(mapped, UnavailableError)
    assert mapped.retry_delay == 0.25
    assert ("grpc-retry-pushback-ms", "250") in mapped.trailing_metadata


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (service_errors.AlreadyExists("user", "a@b.c", "e-mail taken"), AlreadyExistsError),
        (service_errors.Unauthenticated("no token"), UnauthenticatedError),
        (service_errors.PermissionDenied("admin only"), PermissionDeniedError),
        (service_errors.ResourceExhausted("slow down", retry_after_ms=5), ResourceExhaustedError),
        (service_errors.Internal("oops"), InternalError),
        (service_errors.FailedPrecondition("not yet"), FailedPreconditionError),
    ],
)
async def test_wire_service_errors_map_to_their_classes(
    error: service_errors.ServiceError, cls: type[MeshError]
) -> None:
    mapped = from_rpc_error(await failure(raising(error)))
    assert type(mapped) is cls
    assert (mapped.code, mapped.message) == (error.code, error.message)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    ],
)
async def test_wire_error_without_details_still_maps(code: grpc.StatusCode) -> None:
    mapped = from_rpc_error(await failure(aborting(code, "plain")))
    assert type(mapped) is EXPECTED_CLASS.get(code, MeshError)
    assert (mapped.code, mapped.message, mapped.details) == (code, "plain", ())


async def test_wire_garbage_details_do_not_crash() -> None:
    behaviour = aborting(grpc.StatusCode.INTERNAL, "broken", ((DETAILS_KEY, b"\xff\xfe\x00junk"),))
    mapped = from_rpc_error(await failure(behaviour))
    assert type(mapped) is InternalError
    assert (mapped.message, mapped.details) == ("broken", ())


async def test_wire_details_of_another_code_are_dropped() -> None:
    status = rich_status(grpc.StatusCode.NOT_FOUND, "x", [error_details_pb2.ResourceInfo()])
    trailing = ((DETAILS_KEY, status.SerializeToString()),)
    mapped = from_rpc_error(await failure(aborting(grpc.StatusCode.INTERNAL, "x", trailing)))
    assert type(mapped) is InternalError
    assert mapped.details == ()


async def test_wire_deadline_exceeded_maps() -> None:
    async def hang(context: grpc.aio.ServicerContext[object, object], count: int) -> None:
        await asyncio.sleep(5)

    async with running({"slow": hang}) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await server.get_user("slow", within=0.1)
    assert type(from_rpc_error(info.value)) is DeadlineExceededError


async def test_wire_error_of_the_sync_api_maps_too() -> None:
    """grpcio's blocking API raises _InactiveRpcError, whose metadata is a tuple."""
    error = service_errors.InvalidArgument("bad", [service_errors.FieldViolation("name", "empty")])

    def call_blocking(target: str) -> grpc.RpcError:
        with grpc.insecure_channel(target) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            try:
                stub.GetUser(user_pb2.GetUserRequest(id="x"), timeout=5)
            except grpc.RpcError as err:
                return err
        raise AssertionError("the call should have failed")

    async with running({"x": raising(error)}) as server:
        err = await asyncio.to_thread(call_blocking, server.target)
    assert not isinstance(err, grpc.aio.AioRpcError)
    mapped = from_rpc_error(err)
    assert isinstance(mapped, InvalidArgumentError)
    assert mapped.field_violations == (("name", "empty"),)
