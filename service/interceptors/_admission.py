"""Admission: caps on the application calls a replica serves at once.

Only ``meshdemo.v1.UserService`` methods are admitted here; health and
reflection are never wrapped, so no number of application calls can make a
health check fail (grpcio's own ``maximum_concurrent_rpcs`` would count them
too, and is not used).

A call is admitted when every cap that applies to it has room:

1. the total of application calls (``max_calls``, ``MESH_MAX_CONCURRENT_RPCS``);
2. the cap of its kind: Chat streams, ListUsers streams, or unary-response
   calls (GetUser, CreateUser, BatchCreateUsers);
3. for the two long-lived streams (Chat, ListUsers), the open streams of its
   principal (the authenticated ``sub``; with auth off there is no principal
   and this cap does not apply).

Beyond a cap the call is refused with RESOURCE_EXHAUSTED, a message naming
the cap, and ``grpc-retry-pushback-ms`` trailing metadata, before the request
is decoded. The layer runs inside auth (it needs the principal), so refused
calls are traced, logged and counted like any other and unauthenticated ones
never reach it.

A Chat stream whose client sends nothing for ``chat_idle_timeout`` seconds
ends with DEADLINE_EXCEEDED (a time bound expired; CANCELLED would read as
"the caller cancelled", which the client library reports as its own doing),
and its slot is freed.

Calls that arrive without a deadline are bounded by
:class:`DefaultDeadlineInterceptor`, first in the chain (``default_call_timeout``
and ``default_stream_timeout``), so no such call holds a slot, or a grpc call,
for good.

Invariant: every admitted call releases exactly what it took, once, when it
ends (success, failure, cancellation or abandonment): the counts return to 0
when no call is open.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from meshdemo.contract import SERVICE_NAME
from service.auth import current_principal
from service.errors import ResourceExhausted, ServiceError
from service.interceptors._base import (
    MAX_CACHED_METHODS,
    CallHook,
    Context,
    HookInterceptor,
    MethodInfo,
)

__all__ = [
    "Admission",
    "AdmissionInterceptor",
    "AdmissionLimits",
    "CallKind",
    "DefaultDeadlineInterceptor",
    "IdleTimeout",
]

_SERVICE = SERVICE_NAME
_log = logging.getLogger("meshdemo.interceptors")


class CallKind(enum.Enum):
    """The per-method cap a call counts against."""

    CHAT = "Chat streams"
    LIST = "ListUsers streams"
    UNARY = "unary calls"

    @property
    def is_stream(self) -> bool:
        """Whether calls of this kind stay open (and count per principal)."""
        return self is not CallKind.UNARY

    @classmethod
    def of(cls, method: MethodInfo) -> CallKind:
        """The kind of ``method``: its response streams, or it answers once."""
        if method.name == "Chat":
            return cls.CHAT
        if method.response_streaming:
            return cls.LIST
        return cls.UNARY


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The caps of one replica; every count must be at least 1.

    Attributes:
        max_calls: Application calls at once, all kinds together.
        max_chat_streams: Open Chat streams.
        max_list_streams: Open ListUsers streams.
        max_unary: Unary-response calls in flight.
        max_streams_per_principal: Open Chat and ListUsers streams of one caller.
        chat_idle_timeout: Seconds a Chat may wait for its client's next
            message; 0 means no bound.
        retry_after_ms: The pushback sent with a refusal.
    """

    max_calls: int = 1000
    max_chat_streams: int = 200
    max_list_streams: int = 100
    max_unary: int = 800
    max_streams_per_principal: int = 20
    chat_idle_timeout: float = 300.0
    retry_after_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_chat_streams", "max_list_streams", "max_unary"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_streams_per_principal < 1:
            raise ValueError("max_streams_per_principal must be at least 1")
        if self.chat_idle_timeout < 0 or self.retry_after_ms < 0:
            raise ValueError("chat_idle_timeout and retry_after_ms must be 0 or more")

    def cap_of(self, kind: CallKind) -> int:
        """The cap of ``kind``."""
        return {
            CallKind.CHAT: self.max_chat_streams,
            CallKind.LIST: self.max_list_streams,
            CallKind.UNARY: self.max_unary,
        }[kind]


class Admission:
    """The open-call counts of one replica, changed only by :meth:`admit` and :meth:`release`.

    Both run on the event loop without awaiting, so no lock is needed.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_kind: Counter[CallKind] = Counter()
        self.by_principal: Counter[str] = Counter()

    def __repr__(self) -> str:
        kinds = {kind.name: self.by_kind[kind] for kind in CallKind}
        return (
            f"Admission(total={self.total}, by_kind={kinds}, "
            f"principals={len(self.by_principal)}, streams={sum(self.by_principal.values())})"
        )

    def refusal(self, kind: CallKind, principal: str | None) -> str | None:
        """Which cap a call of ``kind`` by ``principal`` would exceed; None if none."""
        limits = self.limits
        if self.total >= limits.max_calls:
            return f"this replica serves at most {limits.max_calls} calls at once"
        if self.by_kind[kind] >= limits.cap_of(kind):
            return f"this replica serves at most {limits.cap_of(kind)} {kind.value} at once"
        if (
            kind.is_stream
            and principal is not None
            and self.by_principal[principal] >= limits.max_streams_per_principal
        ):
            return (
                f"a caller may hold at most {limits.max_streams_per_principal} open "
                "Chat and ListUsers streams per replica; close one first"
            )
        return None

    def admit(self, kind: CallKind, principal: str | None) -> None:
        """Count the call in, or raise ResourceExhausted (nothing counted) if a cap is full."""
        reason = self.refusal(kind, principal)
        if reason is not None:
            raise ResourceExhausted(
                f"too many calls: {reason}; retry later",
                retry_after_ms=self.limits.retry_after_ms,
            )
        self.total += 1
        self.by_kind[kind] += 1
        if kind.is_stream and principal is not None:
            self.by_principal[principal] += 1

    def release(self, kind: CallKind, principal: str | None) -> None:
        """Count out a call that :meth:`admit` counted in."""
        self.total -= 1
        self.by_kind[kind] -= 1
        if kind.is_stream and principal is not None:
            self.by_principal[principal] -= 1
            if self.by_principal[principal] <= 0:
                del self.by_principal[principal]  # idle callers cost no memory


class IdleTimeout(ServiceError):
    """A Chat client sent nothing for longer than the idle timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


async def _idle_bounded(requests: AsyncIterator[Any], timeout: float) -> AsyncIterator[Any]:
    """``requests``, ending the call with IdleTimeout when the next one takes over ``timeout``."""
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(timeout):
                request = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise IdleTimeout(
                f"chat closed by the server: no message from the client for {timeout:g} s "
                "(the idle timeout); open a new stream to go on"
            ) from None
        yield request


class _Gate(CallHook[str | None]):
    __slots__ = ("_admission", "_idle_timeout", "_kind")

    def __init__(self, admission: Admission, kind: CallKind) -> None:
        self._admission = admission
        self._kind = kind
        timeout = admission.limits.chat_idle_timeout
        self._idle_timeout = timeout if kind is CallKind.CHAT and timeout > 0 else None

    def begin(self, context: Context) -> str | None:
        principal = current_principal.get()
        sub = None if principal is None else principal.sub
        self._admission.admit(self._kind, sub)  # last: a refusal must count nothing
        return sub

    def requests(self, state: str | None, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        if self._idle_timeout is None:
            return requests
        return _idle_bounded(requests, self._idle_timeout)

    def end(
        self, state: str | None, context: Context, exc: BaseException | None, sent: int
    ) -> None:
        self._admission.release(self._kind, state)


class AdmissionInterceptor(HookInterceptor):
    """Admits UserService calls within the caps of ``limits`` (see the module doc).

    Args:
        limits: The caps; :attr:`admission` holds the live counts.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        super().__init__()
        self.admission = Admission(limits)

    def hook_for(self, method: MethodInfo) -> CallHook[str | None] | None:
        """A gate for every UserService method; health and reflection pass unwrapped."""
        if method.service != _SERVICE:
            return None
        return _Gate(self.admission, CallKind.of(method))


# -- default deadline -------------------------------------------------------------------------

_Handler = Any  # grpc.RpcMethodHandler[Any, Any]


class _NoDeadline:
    """How long a call without a client deadline may take (one per server)."""

    __slots__ = ("call_timeout", "stream_timeout")

    def __init__(self, call_timeout: float, stream_timeout: float) -> None:
        self.call_timeout = call_timeout
        self.stream_timeout = stream_timeout

    def bounded(self, context: Context) -> bool:
        # With a client deadline grpc core ends the call on time by itself.
        return context.time_remaining() is None

    async def first_request(self, requests: AsyncIterator[Any], context: Context) -> Any:
        """The one request message of a unary-request call, waited for within the bound."""
        try:
            async with asyncio.timeout(self.call_timeout if self.bounded(context) else None):
                return await anext(aiter(requests))
        except TimeoutError:
            await _abort_late(context, self.call_timeout, "the request message did not arrive")
        except StopAsyncIteration:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "this method takes exactly one request message; the stream ended without one",
            )


async def _abort_late(context: Context, bound: float, what: str) -> NoReturn:
    _log.info("call ended at the default deadline", extra={"what": what, "bound_s": bound})
    await context.abort(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{what} within {bound:g} s, the server's bound for calls without a deadline; "
        "set a deadline on the call",
    )


def _bounded_unary(inner: Callable[..., Any], limits: _NoDeadline) -> Callable[..., Any]:
    async def call(requests: AsyncIterator[Any], context: Context) -> Any:
        if not limits.bounded(context):
            return await inner(await limits.first_request(requests, context), context)
        timeout = asyncio.timeout(limits.call_timeout)
        try:
            async with timeout:
                return await inner(await limits.first_request(requests, context), context)
        except TimeoutError:
            if not timeout.expired():
                raise
            await _abort_late(context, limits.call_timeout, "the call did not complete")

    return call


def _bounded_stream(
    inner: Callable[..., Any], limits: _NoDeadline, whole_stream: bool
) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(inner):
        # A handler writing with context.write (health Watch): only its request is bounded.
        async def writer(requests: AsyncIterator[Any], context: Context) -> None:
            await inner(await limits.first_request(requests, context), context)

        return writer

    async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        request = await limits.first_request(requests, context)
        bound = limits.stream_timeout if whole_stream and limits.bounded(context) else 0.0
        responses = inner(request, context)
        deadline = asyncio.get_running_loop().time() + bound
        try:
            while True:
                try:
                    # Only the wait for the next response is bounded: a timeout
                    # must never fire while grpc, not this generator, runs.
                    async with asyncio.timeout_at(deadline if bound > 0 else None):
                        response = await anext(responses)
                except StopAsyncIteration:
                    return
                yield response
        except TimeoutError:
            await responses.aclose()
            await _abort_late(context, bound, "the stream did not complete")
        finally:
            await responses.aclose()  # the inner layers end before this one

    return stream


def _with_default_deadline(method: str, handler: _Handler, limits: _NoDeadline) -> _Handler:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        whole = method.startswith(f"/{_SERVICE}/")
        return grpc.stream_stream_rpc_method_handler(
            _bounded_stream(handler.unary_stream, limits, whole), **serializers
        )
    return grpc.stream_unary_rpc_method_handler(
        _bounded_unary(handler.unary_unary, limits), **serializers
    )


class DefaultDeadlineInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Outermost: a bound on calls that arrive without a deadline (see below).

    grpc.aio reads the request of a unary-request method before any handler
    or interceptor runs, and grpc core never ends a call without a deadline
    whose request message is cut short: such a call would stay open for good.
    So this interceptor, first in the chain, serves every unary-request
    method as a request stream (same bytes on the wire, and the layers
    inside it still see the method's real kind) and reads that one message
    itself, within ``call_timeout``. A call without a client deadline then:

    1. ends with DEADLINE_EXCEEDED if its request has not arrived within
       ``call_timeout`` (all methods, health included);
    2. ends with DEADLINE_EXCEEDED if, unary, it has not completed within
       ``call_timeout``;
    3. ends with DEADLINE_EXCEEDED if, a UserService response stream
       (ListUsers), it is still open after ``stream_timeout`` (0: never).

    Request streams (Chat, reflection) pass unchanged: Chat has its idle
    timeout. Calls with a client deadline are not bounded further. The
    stream bound is checked while the server produces the next response,
    never while grpc writes one (cancelling grpc there would leave the
    stream without a status), so a client that stops reading is bounded by
    the per-caller stream cap and keepalive instead.
    """

    def __init__(self, call_timeout: float, stream_timeout: float) -> None:
        if call_timeout <= 0 or stream_timeout < 0:
            raise ValueError("call_timeout must be above 0 and stream_timeout 0 or more")
        self._limits = _NoDeadline(call_timeout, stream_timeout)
        self._handlers: dict[str, _Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        """The called method's handler, its request read by this layer (cached per method)."""
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        wrapped = _with_default_deadline(method, handler, self._limits)
        if len(self._handlers) < MAX_CACHED_METHODS:
            self._handlers[method] = wrapped
        return wrapped
