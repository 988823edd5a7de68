"""Error mapping: the one place where exceptions become a status on the wire.

* :class:`~service.errors.ServiceError` -> its code and message, with its
  ``google.rpc.Status`` (code, message, details) in ``grpc-status-details-bin``
  and its own trailing metadata;
* :class:`NotImplementedError` -> UNIMPLEMENTED (what the generated servicer
  base raises for a method nobody wrote);
* anything else -> INTERNAL with a generic message, the traceback logged:
  no UNKNOWN and no internals ever reach the client;
* grpc's own abort exception (a handler called ``context.abort``) and
  :class:`asyncio.CancelledError` pass through untouched.

:func:`code_of` is the matching classification the logging and metrics
layers use to learn a call's final code from the exception they saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
import grpc.aio
from google.rpc import status_pb2

from service.errors import Internal, ServiceError
from service.interceptors._base import CallHook, Context, HookInterceptor, MethodInfo

__all__ = ["INTERNAL_MESSAGE", "ErrorMappingInterceptor", "code_of"]

#: The only message an unexpected failure shows to the client.
INTERNAL_MESSAGE = "internal error"
_UNIMPLEMENTED_MESSAGE = "method not implemented"
_DETAILS_KEY = "grpc-status-details-bin"
_AbortError = grpc.aio.AbortError


def _code_set_on(context: Context) -> grpc.StatusCode | None:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None


#: Seconds before the server's deadline within which a cancel counts as the deadline. A
#: client cancels its call when its own deadline passes; the server's copy of that deadline
#: runs later by the time the request took to arrive, so the client's cancel can reach the
#: server first (the likely cause of a deadline counted as CANCELLED on a loaded machine).
_DEADLINE_SLACK = 0.05


def _ended_by_client(context: Context) -> grpc.StatusCode:
    # The handler was cancelled (or its stream abandoned): either the deadline
    # passed or the client (or server shutdown) cancelled it.
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def code_of(exc: BaseException | None, context: Context) -> grpc.StatusCode:
    """The status code a call ends with, given the exception that ended it.

    Args:
        exc: What the handler raised, or None when it returned normally.
        context: The call's servicer context.

    Returns:
        OK (or the code the handler set) on success; the error's code for a
        ServiceError; the aborted code for a grpc abort; CANCELLED, or
        DEADLINE_EXCEEDED past the deadline, for a cancelled or abandoned
        call; UNIMPLEMENTED for NotImplementedError; INTERNAL otherwise.
    """
    if exc is None:
        return _code_set_on(context) or grpc.StatusCode.OK
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, _AbortError):
        return _code_set_on(context) or grpc.StatusCode.INTERNAL
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return _ended_by_client(context)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


def _status_metadata(
    status: status_pb2.Status, extra: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str | bytes], ...]:
    return ((_DETAILS_KEY, status.SerializeToString()), *extra)


class _Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class _ErrorMapping(CallHook[None]):
    __slots__ = ("_log", "_method")

    def __init__(self, method: MethodInfo, logger: logging.Logger) -> None:
        self._method = method
        self._log = logger

    def begin(self, context: Context) -> None:
        return None

    async def on_error(self, exc: BaseException, context: Context) -> None:
        if isinstance(exc, _AbortError):
            return
        if isinstance(exc, asyncio.CancelledError):
            # Nothing can be sent any more; recording the code lets the
            # tracing layer's context mark the span.
            context.set_code(_ended_by_client(context))
            return
        if not isinstance(exc, Exception):
            return  # GeneratorExit, KeyboardInterrupt, SystemExit
        await self._abort(context, self._service_error(exc))

    def _service_error(self, exc: Exception) -> ServiceError:
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, NotImplementedError):
            return _Unimplemented(_UNIMPLEMENTED_MESSAGE)
        self._log.error(
            "unhandled exception in %s",
            self._method.full_name,
            exc_info=exc,
            extra={"method": self._method.full_name},
        )
        return Internal(INTERNAL_MESSAGE)

    async def _abort(self, context: Context, err: ServiceError) -> None:
        # Raises grpc's abort exception once the status is sent. (Invalid
        # trailing metadata makes grpc core answer INTERNAL itself.)
        await context.abort(
            err.code,
            err.message,
            trailing_metadata=_status_metadata(err.to_status_proto(), err.trailing_metadata),
        )


class ErrorMappingInterceptor(HookInterceptor):
    """Turns exceptions from inner layers and handlers into wire statuses.

    Args:
        logger: Where tracebacks of unexpected exceptions go.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._log = logger

    def hook_for(self, method: MethodInfo) -> CallHook[None]:
        """Every method's errors are mapped."""
        return _ErrorMapping(method, self._log)
