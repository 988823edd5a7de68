"""Small helpers shared by the service tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from meshdemo.v1 import user_pb2


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations carried by ``err``, by field."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no rich status details on the error"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def create_request(n: int, **fields: object) -> user_pb2.CreateUserRequest:
    """A valid CreateUserRequest number ``n``; ``fields`` override."""
    values: dict[str, object] = {
        "name": f"User {n}",
        "email": f"user{n}@example.com",
        "age": 20 + n % 50,
        "roles": [user_pb2.ROLE_USER],
    }
    values.update(fields)
    return user_pb2.CreateUserRequest(**values)  # type: ignore[arg-type]
