"""Translation between meshdemo.v1 messages and domain values; no rules live here."""

from __future__ import annotations

from meshdemo import contract
from meshdemo.v1 import user_pb2
from service.domain import NewUser, User

__all__ = ["new_user_from_proto", "role_names", "user_to_proto"]


def role_names(values: list[int] | tuple[int, ...]) -> tuple[str, ...]:
    """Enum numbers to role names; unknown or unspecified numbers keep a name
    that validation refuses (``unspecified``, ``role_7``)."""
    return tuple(contract.role_name(value) for value in values)


def _role_value(name: str) -> user_pb2.Role.ValueType:
    return contract.ROLES[name]


def new_user_from_proto(request: user_pb2.CreateUserRequest) -> NewUser:
    """A CreateUserRequest as a domain value; no roles means the ``user`` role."""
    roles = role_names(tuple(request.roles)) or ("user",)
    return NewUser(
        name=request.name,
        email=request.email,
        age=request.age,
        roles=roles,
        request_id=request.request_id,
    )


def user_to_proto(user: User) -> user_pb2.User:
    """A stored user as the wire message."""
    message = user_pb2.User(
        id=user.id,
        name=user.name,
        email=user.email,
        age=user.age,
        roles=[_role_value(r) for r in user.roles],
    )
    message.created_at.FromDatetime(user.created_at)
    return message
