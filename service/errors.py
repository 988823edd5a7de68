"""Errors the service raises, each carrying its gRPC status code and details.

Servicers, domain rules and stores raise these; exactly one interceptor
(:mod:`service.interceptors._errors`) turns them into a status on the wire,
with ``google.rpc`` details encoded in ``grpc-status-details-bin``. Anything
else that escapes a handler becomes INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

__all__ = [
    "MAX_DETAILED_VIOLATIONS",
    "MAX_QUOTED",
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "MalformedRequest",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "quoted",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: ``field`` is a path such as ``users[3].email``."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of every error that maps to a deliberate gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[Message] = (),
        trailing_metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)
        self.trailing_metadata = tuple(trailing_metadata)

    def to_status_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` that carries this error's details."""
        packed = []
        for detail in self.details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(ServiceError):
    """Bad input; every violation is listed in one ``google.rpc.BadRequest``."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        self.violations = tuple(violations)
        details: list[Message] = []
        if self.violations:
            details.append(_bad_request(self.violations))
        super().__init__(message, details=details)


#: Violations sent in one BadRequest; the details travel in a trailer that
#: grpc caps at 16 KiB (a batch of 1000 bad users would exceed it).
MAX_DETAILED_VIOLATIONS = 25


def _bad_request(violations: Sequence[FieldViolation]) -> error_details_pb2.BadRequest:
    listed = list(violations[:MAX_DETAILED_VIOLATIONS])
    if len(violations) > MAX_DETAILED_VIOLATIONS:
        rest = len(violations) - MAX_DETAILED_VIOLATIONS
        listed.append(FieldViolation("", f"and {rest} more violation(s), not listed"))
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in listed
        ]
    )


class MalformedRequest(InvalidArgument):
    """A request message that does not decode (bad protobuf, invalid UTF-8).

    The message names the contract's message type and, on request streams,
    which message failed; never the parser's own error or the bytes.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        metadata = {} if index is None else {"message_index": str(index)}
        self.details = (
            error_details_pb2.ErrorInfo(
                reason="MALFORMED_REQUEST", domain="meshdemo", metadata=metadata
            ),
        )


#: The longest piece of client input an error message quotes; longer input is cut.
MAX_QUOTED = 64


def quoted(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` as ``repr`` for an error message, cut to ``limit`` characters first."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


class NotFound(ServiceError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, name: str) -> None:
        super().__init__(
            f"{resource_type} {quoted(name)} not found",
            details=[
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=name[:MAX_QUOTED]
                )
            ],
        )


class AlreadyExists(ServiceError):
    """A resource with the same unique key exists."""

    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, resource_type: str, name: str, description: str) -> None:
        super().__init__(
            description,
            details=[
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=name, description=description
                )
            ],
        )


class Unauthenticated(ServiceError):
    """No valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """Valid credentials without the needed role."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ServiceError):
    """The system is not in a state the call needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A limit was hit; ``retry_after_ms`` becomes ``grpc-retry-pushback-ms``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        trailing = (
            () if retry_after_ms is None else (("grpc-retry-pushback-ms", str(retry_after_ms)),)
        )
        super().__init__(message, trailing_metadata=trailing)


class Unavailable(ServiceError):
    """The service cannot answer now (store down, shutting down); safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        details: list[Message] = []
        trailing: tuple[tuple[str, str], ...] = ()
        if retry_after_ms is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromMilliseconds(retry_after_ms)
            details.append(info)
            trailing = (("grpc-retry-pushback-ms", str(retry_after_ms)),)
        super().__init__(message, details=details, trailing_metadata=trailing)


class Internal(ServiceError):
    """A bug or an unexpected failure; the message never leaks internals."""

    code = grpc.StatusCode.INTERNAL


# google.rpc.Code and grpc.StatusCode share numbers; keep the import honest.
assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
