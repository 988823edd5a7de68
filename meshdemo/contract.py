"""The contract's constants, read from the generated descriptors of ``meshdemo.v1``.

The service and the client import these instead of each keeping a copy: the
service's full name, the role names of the ``Role`` enum, and the limits that
``protos/meshdemo/v1/limits.proto`` declares as custom options on the fields
and RPCs they bound. A proto that loses one of those annotations fails at
import, not with a silently different limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from google.protobuf import descriptor
from google.protobuf.message import Message

from meshdemo.v1 import limits_pb2, user_pb2

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_BATCH",
    "MAX_PAGE_SIZE",
    "ROLES",
    "ROLE_NAMES",
    "SERVICE_NAME",
    "role_name",
]

_SERVICE = user_pb2.DESCRIPTOR.services_by_name["UserService"]
_ROLE = user_pb2.DESCRIPTOR.enum_types_by_name["Role"]
# Enum values carry the enum's name in upper snake case as a prefix (buf's
# ENUM_VALUE_PREFIX rule): ROLE_ADMIN is the role "admin".
_ROLE_PREFIX = re.sub(r"(?<!^)(?=[A-Z])", "_", _ROLE.name).upper() + "_"


def _option(options: Message, extension: descriptor.FieldDescriptor, where: str) -> int:
    if not options.HasExtension(extension):  # type: ignore[arg-type]
        raise RuntimeError(f"the contract lost its ({extension.full_name}) option on {where}")
    value: int = options.Extensions[extension]  # type: ignore[index]
    return value


def role_name(number: int) -> str:
    """The role name of a ``Role`` number: ``admin`` for ROLE_ADMIN, ``unspecified`` for 0.

    A number the enum does not know keeps a name no role has (``role_7``),
    so that validation can refuse it by name.
    """
    value = _ROLE.values_by_number.get(number)
    if value is None:
        return f"role_{number}"
    return value.name.removeprefix(_ROLE_PREFIX).lower()


#: The full name of the user service (``meshdemo.v1.UserService``): method
#: paths, health, span and metric names.
SERVICE_NAME: str = _SERVICE.full_name
#: Role names a user may hold and their ``Role`` numbers (ROLE_UNSPECIFIED left out).
ROLES: Mapping[str, user_pb2.Role.ValueType] = MappingProxyType(
    {
        role_name(value.number): user_pb2.Role.ValueType(value.number)
        for value in _ROLE.values
        if value.number != 0
    }
)
#: The names of :data:`ROLES`, in the enum's order.
ROLE_NAMES: tuple[str, ...] = tuple(ROLES)

_BATCH = _SERVICE.methods_by_name["BatchCreateUsers"]
#: Most users one BatchCreateUsers call may carry.
MAX_BATCH: int = _option(_BATCH.GetOptions(), limits_pb2.max_request_messages, _BATCH.full_name)

_PAGE_SIZE = user_pb2.ListUsersRequest.DESCRIPTOR.fields_by_name["page_size"]
#: The ListUsers page size that ``page_size = 0`` means.
DEFAULT_PAGE_SIZE: int = _option(
    _PAGE_SIZE.GetOptions(), limits_pb2.default_page_size, _PAGE_SIZE.full_name
)
#: The largest ListUsers page; a larger ``page_size`` is served this many users.
MAX_PAGE_SIZE: int = _option(
    _PAGE_SIZE.GetOptions(), limits_pb2.max_page_size, _PAGE_SIZE.full_name
)
