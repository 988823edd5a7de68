"""One wrapper for the four RPC kinds, around a small per-concern hook.

Every interceptor of this package is a :class:`HookInterceptor`: for each
method it builds a :class:`CallHook` once, and :func:`wrap_handler` wraps the
method's handler so that, for every call:

1. ``hook.begin(context)`` runs before the handler; it may raise to refuse
   the call (the handler then never runs and ``end`` is not called);
2. for request streams, ``hook.requests(state, iterator)`` may wrap the
   request iterator (to count messages, say);
3. ``hook.end(state, context, exc, sent)`` runs exactly once after ``begin``
   returned, when the call is over: for response streams that is when the
   whole stream is over, not when the handler returns its iterator;
   ``exc`` is what ended the call (None on success); an exception from
   ``end`` is logged and swallowed, never breaking the call;
4. on failure, ``await hook.on_error(exc, context)`` runs after ``end``; it
   may raise a replacement (the error mapper aborts there), otherwise
   ``exc`` propagates unchanged.

A response stream abandoned by its consumer (client gone while the server
was blocked writing) ends with :class:`GeneratorExit` when the stream is
closed; every layer closes the layer inside it first, so they end innermost
first. That close may come after grpc freed the call: ``end`` may read only
what the servicer context keeps in Python (``code()``, ``time_remaining()``);
anything that reaches the core call (``peer()``, ``invocation_metadata()``,
``auth_context()``) crashes the process there and belongs in ``begin``.

Handlers may be coroutine functions returning a message, or async generator
functions for response streams. Stream handlers written against
``context.write`` (coroutine functions returning None) and plain functions are
adapted too, but run on the event loop: ours are all ``async``. Request
messages read through ``context.read()`` instead of the iterator are not seen
by ``requests``.

Request decoding is deferred (:class:`DeferredDecoding`): grpc.aio would
decode request bytes before any interceptor runs, and answer a message that
does not decode with UNKNOWN and a traceback, before auth and unseen by the
other layers. So the innermost wrapper hands grpc an identity deserializer
and decodes each request itself, after every layer's ``begin`` (auth
included) ran; a message that does not decode raises
:class:`~service.errors.MalformedRequest` (INVALID_ARGUMENT) inside the call,
which every layer then sees like any other failure, also in the middle of a
request stream. Outer layers' ``requests`` hooks therefore see raw bytes:
they may count messages but must not read them.

Wrapped handlers are cached per method name (``intercept_service`` runs on
every RPC), so hooks read per-call data from the servicer context, never from
``HandlerCallDetails``.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import grpc
import grpc.aio

from service.errors import MalformedRequest

__all__ = [
    "CallHook",
    "Context",
    "DeferredDecoding",
    "HookInterceptor",
    "MethodInfo",
    "wrap_handler",
]

#: The servicer context every hook receives (possibly a tracing proxy of it).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Unary: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
_Streaming: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]
_Decode: TypeAlias = Callable[[bytes], Any]

StateT = TypeVar("StateT")

_log = logging.getLogger("meshdemo.interceptors")

#: Method names whose wrapped handler is cached; beyond it (a server with a
#: generic handler for any name), handlers are wrapped per call instead.
MAX_CACHED_METHODS = 1024

_GRPC_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """A method's names and kind, computed once per method.

    Attributes:
        full_name: ``/meshdemo.v1.UserService/GetUser``.
        service: ``meshdemo.v1.UserService``.
        name: ``GetUser``.
        grpc_type: ``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream``.
    """

    full_name: str
    service: str
    name: str
    grpc_type: str

    @property
    def request_streaming(self) -> bool:
        """Whether the client sends a stream."""
        return self.grpc_type in ("client_stream", "bidi_stream")

    @property
    def response_streaming(self) -> bool:
        """Whether the server sends a stream."""
        return self.grpc_type in ("server_stream", "bidi_stream")

    @classmethod
    def of(cls, full_name: str, handler: _Handler) -> MethodInfo:
        """The info of ``full_name`` served by ``handler``."""
        service, slash, name = full_name.removeprefix("/").partition("/")
        if not slash:
            service, name = "unknown", full_name
        kind = _GRPC_TYPES[bool(handler.request_streaming), bool(handler.response_streaming)]
        return cls(full_name, service, name, kind)


class CallHook(abc.ABC, Generic[StateT]):
    """What one concern does around every call of one method (see the module doc)."""

    __slots__ = ()

    @abc.abstractmethod
    def begin(self, context: Context) -> StateT:
        """Start of a call; returns the state ``end`` receives. May raise to refuse."""

    def requests(self, state: StateT, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The request iterator the handler sees (request streams only)."""
        return requests

    def end(self, state: StateT, context: Context, exc: BaseException | None, sent: int) -> None:
        """End of the call: ``exc`` ended it (None on success); ``sent`` responses went out."""

    async def on_error(self, exc: BaseException, context: Context) -> None:
        """After ``end`` on failure; may raise a replacement for ``exc``."""


def _end(
    hook: CallHook[Any],
    state: Any,
    context: Context,
    exc: BaseException | None,
    sent: int,
) -> None:
    # Observability never breaks the call.
    try:
        hook.end(state, context, exc, sent)
    except Exception:
        _log.exception("interceptor hook failed", extra={"hook": type(hook).__name__})


def _as_coroutine_function(behavior: Callable[..., Any]) -> _Unary:
    if inspect.iscoroutinefunction(behavior):
        return behavior

    async def adapted(request: Any, context: Context) -> Any:
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return adapted


def _as_async_gen_function(behavior: Callable[..., Any]) -> _Streaming:
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def adapted(request: Any, context: Context) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            # A handler that writes with context.write and returns None.
            result = await result
        if result is None:
            return
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:
            for response in result:
                yield response

    return adapted


class DeferredDecoding:
    """The request deserializer grpc gets: it passes raw bytes through unchanged.

    The wrapper that installed it decodes them with :attr:`decode` (the
    handler's own deserializer) once the call's hooks have begun. Wrappers
    further out see it on the handler and leave decoding where it is.
    """

    __slots__ = ("decode", "type_name")

    def __init__(self, decode: _Decode) -> None:
        self.decode = decode
        message_type = getattr(decode, "__self__", None)
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        #: The contract's message name, for error messages (never a Python class).
        self.type_name: str = getattr(descriptor, "full_name", "") or "request message"

    def __call__(self, raw: bytes) -> bytes:
        return raw

    def one(self, raw: Any, index: int | None = None) -> Any:
        """``raw`` decoded; MalformedRequest if it does not decode."""
        if not isinstance(raw, bytes | bytearray | memoryview):
            return raw  # decoded already (a handler called directly, in tests)
        try:
            return self.decode(bytes(raw))
        except Exception:
            # The parser's message names its internals and adds nothing a
            # client can act on; its traceback would cost a log line per call.
            where = "" if index is None else f" (message {index} of the stream)"
            raise MalformedRequest(
                f"the request is not a valid {self.type_name}{where}: malformed protobuf "
                "or invalid UTF-8 in a string field",
                index=index,
            ) from None

    async def stream(self, raws: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``raws`` decoded one by one; the first bad one ends the call."""
        index = 0
        async for raw in raws:
            yield self.one(raw, index)
            index += 1


def _deferral_for(handler: _Handler) -> DeferredDecoding | None:
    """A new deferral if ``handler`` still decodes its requests itself, else None."""
    decode = handler.request_deserializer
    if decode is None or isinstance(decode, DeferredDecoding):
        return None
    return DeferredDecoding(decode)


def _wants_requests(hook: CallHook[Any], info: MethodInfo) -> bool:
    return info.request_streaming and type(hook).requests is not CallHook.requests


def _decoded(request: Any, decoding: DeferredDecoding | None, info: MethodInfo) -> Any:
    if decoding is None:
        return request
    return decoding.stream(request) if info.request_streaming else decoding.one(request)


def _unary_response(
    behavior: Callable[..., Any],
    hook: CallHook[Any],
    info: MethodInfo,
    decoding: DeferredDecoding | None,
) -> _Unary:
    inner = _as_coroutine_function(behavior)
    begin, on_error = hook.begin, hook.on_error
    wrap_requests = hook.requests if _wants_requests(hook, info) else None

    async def call(request: Any, context: Context) -> Any:
        state = begin(context)
        try:
            request = _decoded(request, decoding, info)
            if wrap_requests is not None:
                request = wrap_requests(state, request)
            response = await inner(request, context)
        except BaseException as exc:
            _end(hook, state, context, exc, 0)
            await on_error(exc, context)
            raise
        _end(hook, state, context, None, 1)
        return response

    return call


def _stream_response(
    behavior: Callable[..., Any],
    hook: CallHook[Any],
    info: MethodInfo,
    decoding: DeferredDecoding | None,
) -> _Streaming:
    inner = _as_async_gen_function(behavior)
    begin, on_error = hook.begin, hook.on_error
    wrap_requests = hook.requests if _wants_requests(hook, info) else None

    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        state = begin(context)
        responses: Any = None
        sent = 0
        try:
            request = _decoded(request, decoding, info)
            if wrap_requests is not None:
                request = wrap_requests(state, request)
            responses = inner(request, context)
            async for response in responses:
                sent += 1
                yield response
        except BaseException as exc:
            if exc.__class__ is GeneratorExit and responses is not None:
                # Abandoned while suspended at our yield: the inner layers are
                # suspended too; close them first so they end before us.
                await responses.aclose()
            _end(hook, state, context, exc, sent)
            await on_error(exc, context)
            raise
        _end(hook, state, context, None, sent)

    return call


def wrap_handler(handler: _Handler, hook: CallHook[Any], info: MethodInfo) -> _Handler:
    """``handler`` with ``hook`` run around every call (any of the four kinds).

    The first wrapper around a handler that decodes its own requests takes
    the decoding over (see :class:`DeferredDecoding`).
    """
    decoding = _deferral_for(handler)
    serializers = {
        "request_deserializer": handler.request_deserializer if decoding is None else decoding,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _stream_response(handler.stream_stream, hook, info, decoding), **serializers
        )
    if handler.request_streaming:
        assert handler.stream_unary is not None
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, hook, info, decoding), **serializers
        )
    if handler.response_streaming:
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            _stream_response(handler.unary_stream, hook, info, decoding), **serializers
        )
    assert handler.unary_unary is not None
    return grpc.unary_unary_rpc_method_handler(
        _unary_response(handler.unary_unary, hook, info, decoding), **serializers
    )


class HookInterceptor(grpc.aio.ServerInterceptor, abc.ABC):  # type: ignore[type-arg]
    """A server interceptor defined by the hook it builds for each method."""

    def __init__(self) -> None:
        self._handlers: dict[str, _Handler] = {}

    @abc.abstractmethod
    def hook_for(self, method: MethodInfo) -> CallHook[Any] | None:
        """The hook for every call of ``method``, or None to leave it unwrapped."""

    def wrap(self, method: str, handler: _Handler) -> _Handler:
        """``handler`` of ``method`` wrapped with this interceptor's hook, if any."""
        info = MethodInfo.of(method, handler)
        hook = self.hook_for(info)
        return handler if hook is None else wrap_handler(handler, hook, info)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        """The cached wrapped handler of the called method (None if unknown)."""
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler: _Handler | None = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # unknown method: UNIMPLEMENTED
        wrapped = self.wrap(method, handler)
        if len(self._handlers) < MAX_CACHED_METHODS:
            self._handlers[method] = wrapped
        return wrapped
