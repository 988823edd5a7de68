"""GetUser and CreateUser against a real replica: happy paths and every error code."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshdemo.v1 import user_pb2, user_pb2_grpc
from tests.service.helpers import create_request, violations

Md = tuple[tuple[str, str], ...]


async def test_create_then_get_round_trips(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    created = (await stub.CreateUser(create_request(1), metadata=admin)).user
    assert created.id
    assert created.created_at.seconds > 0
    fetched = (await stub.GetUser(user_pb2.GetUserRequest(id=created.id), metadata=admin)).user
    assert fetched == created
    assert list(fetched.roles) == [user_pb2.ROLE_USER]


async def test_create_without_roles_gets_the_user_role(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    created = (await stub.CreateUser(create_request(2, roles=[]), metadata=admin)).user
    assert list(created.roles) == [user_pb2.ROLE_USER]


async def test_get_unknown_id_is_not_found_and_names_it(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(user_pb2.GetUserRequest(id="01NOPE"), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "01NOPE" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    info = error_details_pb2.ResourceInfo()
    assert status is not None
    assert status.details[0].Unpack(info)
    assert info.resource_name == "01NOPE"


async def test_get_empty_id_is_invalid_argument(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(user_pb2.GetUserRequest(id=""), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == {"id": "must not be empty"}


async def test_create_reports_every_invalid_field_at_once(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    bad = user_pb2.CreateUserRequest(
        name="", email="not-an-address", age=151, roles=[user_pb2.ROLE_UNSPECIFIED]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(bad, metadata=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"name", "email", "age", "roles"}


async def test_unknown_role_number_is_refused(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(create_request(3, roles=[42]), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "role_42" in violations(caught.value)["roles"]


async def test_duplicate_email_is_already_exists_whatever_the_case(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await stub.CreateUser(create_request(4, email="Dup@Example.com"), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(create_request(5, email="dup@example.COM"), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_same_request_id_twice_returns_the_same_user_and_stores_one(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    request = create_request(6, request_id="req-6")
    first = (await stub.CreateUser(request, metadata=admin)).user
    second = (await stub.CreateUser(request, metadata=admin)).user
    assert first == second
    listed = [r.user.id async for r in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=admin)]
    assert listed.count(first.id) == 1
    assert len(listed) == 1


async def test_request_id_reused_with_other_fields_is_refused(
    stub: user_pb2_grpc.UserServiceAsyncStub, admin: Md
) -> None:
    await stub.CreateUser(create_request(7, request_id="req-7"), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(create_request(8, request_id="req-7"), metadata=admin)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violations(caught.value)


async def test_reader_cannot_create(stub: user_pb2_grpc.UserServiceAsyncStub, reader: Md) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUser(create_request(9), metadata=reader)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_no_token_is_unauthenticated(stub: user_pb2_grpc.UserServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(user_pb2.GetUserRequest(id="x"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
