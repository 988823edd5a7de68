"""The client's exceptions, and the one place that maps a grpc error onto them.

Every failed call surfaces as a :class:`MeshError` subclass chosen by the
status code (one class per non-OK code, each registered where it is defined),
carrying the status code, the message, the ``google.rpc`` details
decoded from ``grpc-status-details-bin`` and the trailing metadata. The grpc
error stays attached as ``__cause__``.

Decoding is forgiving by design: an error without details, with undecodable
details, or with details whose code disagrees with the call's code still maps
(the details are then left out); a detail of a type this process does not know
is kept as the packed ``google.protobuf.Any``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CallCancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "MeshError",
    "MetadataPair",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_class",
    "from_rpc_error",
    "rpc_code",
    "rpc_message",
    "rpc_trailing_metadata",
]

_log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"

MetadataPair = tuple[str, str | bytes]
"""One trailing metadata entry; values of ``-bin`` keys are bytes."""

M = TypeVar("M", bound=Message)


class FieldViolation(NamedTuple):
    """One invalid request field, from a ``google.rpc.BadRequest`` detail."""

    field: str
    description: str


class MeshError(Exception):
    """A call failed with a non-OK status.

    Every one of the sixteen non-OK status codes has its own subclass, which
    registers itself for its code where it is defined (``class
    NotFoundError(MeshError, code=grpc.StatusCode.NOT_FOUND)``): that class
    statement is the one place a code is mapped. ``MeshError`` itself is what
    an error with no valid code (OK, a foreign object) maps to.

    Attributes:
        code: the gRPC status code.
        message: the status message (``details()`` in grpcio's words).
        details: the decoded ``google.rpc`` detail messages, in wire order.
        trailing_metadata: the call's trailing metadata, as (key, value) pairs.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init_subclass__(cls, code: grpc.StatusCode | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is None:
            return  # A user's subclass of a mapped class: not a mapping of its own.
        if code is grpc.StatusCode.OK or code in _CLASS_BY_CODE:
            raise TypeError(f"{code.name} cannot be mapped to {cls.__name__}")
        cls.code = code
        _CLASS_BY_CODE[code] = cls

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[Message] = (),
        trailing_metadata: Sequence[MetadataPair] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: tuple[Message, ...] = tuple(details)
        self.trailing_metadata: tuple[MetadataPair, ...] = tuple(trailing_metadata)

    def detail(self, kind: type[M]) -> M | None:
        """The first detail of type ``kind``, if any."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asked to wait (``google.rpc.RetryInfo``), if it said."""
        info = self.detail(error_details_pb2.RetryInfo)
        if info is None or not info.HasField("retry_delay"):
            return None
        return float(info.retry_delay.ToTimedelta().total_seconds())

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


#: Status code -> its class; filled only by ``MeshError.__init_subclass__``.
_CLASS_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {}


# The sixteen codes, in the order of their numbers (grpc/doc/statuscodes.md).


class CallCancelledError(MeshError, code=grpc.StatusCode.CANCELLED):
    """The call was cancelled (named so as not to shadow ``asyncio.CancelledError``)."""


class UnknownError(MeshError, code=grpc.StatusCode.UNKNOWN):
    """The server (or a proxy) failed without saying how, e.g. ``Stream removed``."""


class InvalidArgumentError(MeshError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The request was rejected as invalid; see :attr:`field_violations`."""

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        """Every field violation of every ``google.rpc.BadRequest`` detail."""
        return tuple(
            FieldViolation(v.field, v.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for v in detail.field_violations
        )


class DeadlineExceededError(MeshError, code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The call's deadline passed."""


class NotFoundError(MeshError, code=grpc.StatusCode.NOT_FOUND):
    """The named resource does not exist."""


class AlreadyExistsError(MeshError, code=grpc.StatusCode.ALREADY_EXISTS):
    """A resource with the same unique key exists."""


class PermissionDeniedError(MeshError, code=grpc.StatusCode.PERMISSION_DENIED):
    """The credentials lack the needed role."""


class ResourceExhaustedError(MeshError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """A limit was hit (rate, quota, size)."""


class FailedPreconditionError(MeshError, code=grpc.StatusCode.FAILED_PRECONDITION):
    """The system is not in the state the call needs (do not retry as is)."""


class AbortedError(MeshError, code=grpc.StatusCode.ABORTED):
    """The call was aborted, typically by a concurrency conflict (retry the whole operation)."""


class OutOfRangeError(MeshError, code=grpc.StatusCode.OUT_OF_RANGE):
    """The request went past a valid range (e.g. reading past the end)."""


class UnimplementedError(MeshError, code=grpc.StatusCode.UNIMPLEMENTED):
    """The server does not implement this method (an older replica?)."""


class InternalError(MeshError, code=grpc.StatusCode.INTERNAL):
    """The server failed unexpectedly."""


class UnavailableError(MeshError, code=grpc.StatusCode.UNAVAILABLE):
    """No replica could answer (after any retries)."""


class DataLossError(MeshError, code=grpc.StatusCode.DATA_LOSS):
    """Unrecoverable data loss or corruption."""


class UnauthenticatedError(MeshError, code=grpc.StatusCode.UNAUTHENTICATED):
    """No valid credentials were sent."""


def error_class(code: grpc.StatusCode) -> type[MeshError]:
    """The exception class of ``code``; :class:`MeshError` for OK (no class of its own)."""
    return _CLASS_BY_CODE.get(code, MeshError)


def from_rpc_error(err: grpc.RpcError) -> MeshError:
    """Map a failed call's error onto the library's exception for its code.

    Never raises: whatever the error carries, the result is a :class:`MeshError`
    with ``__cause__`` set to ``err``.
    """
    code = rpc_code(err)
    trailing = rpc_trailing_metadata(err)
    mapped = error_class(code)(
        rpc_message(err),
        code=code,
        details=_decode_details(code, trailing),
        trailing_metadata=trailing,
    )
    mapped.__cause__ = err
    return mapped


# -- Reading a grpc error --------------------------------------------------------
# grpc.RpcError itself declares no methods: the errors grpcio raises (AioRpcError,
# _InactiveRpcError) are also grpc.Call-like, but a bare RpcError is legal too.
# These readers accept both and never raise.


def rpc_code(err: grpc.RpcError) -> grpc.StatusCode:
    """The error's status code; UNKNOWN when it has none."""
    try:
        code = err.code()
    except Exception:  # a bare RpcError, or a broken one
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def rpc_message(err: grpc.RpcError) -> str:
    """The error's status message; ``str(err)`` when it has none."""
    try:
        message = err.details()
    except Exception:  # a bare RpcError, or a broken one
        return str(err)
    return message if isinstance(message, str) else ""


def rpc_trailing_metadata(err: grpc.RpcError) -> tuple[MetadataPair, ...]:
    """The error's trailing metadata as (key, value) pairs; empty when it has none."""
    try:
        raw: Iterable[object] | None = err.trailing_metadata()
        return tuple(_pairs(raw or ()))
    except Exception:  # a bare RpcError, or metadata of an unexpected shape
        return ()


def _pairs(raw: Iterable[object]) -> Iterable[MetadataPair]:
    for item in raw:
        if not isinstance(item, tuple) or len(item) != 2:
            continue
        key, value = item
        if isinstance(key, str) and isinstance(value, str | bytes):
            yield key, value


# -- Decoding google.rpc details -------------------------------------------------


def _decode_details(code: grpc.StatusCode, trailing: Sequence[MetadataPair]) -> tuple[Message, ...]:
    raw = next((value for key, value in trailing if key == STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return ()
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        _log.debug("undecodable %s ignored", STATUS_DETAILS_KEY)
        return ()
    if status.code != code.value[0]:
        # Details of some other status (a proxy rewrote it?): not to be trusted.
        _log.debug("%s with code %d on a %s call ignored", STATUS_DETAILS_KEY, status.code, code)
        return ()
    return tuple(_unpack(packed) for packed in status.details)


def _unpack(packed: any_pb2.Any) -> Message:
    """The message inside ``packed``, or ``packed`` itself when its type is unknown or broken."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return packed
    message = message_factory.GetMessageClass(descriptor)()
    try:
        ok = packed.Unpack(message)
    except DecodeError:
        return packed
    return message if ok else packed
