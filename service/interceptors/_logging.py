"""Access logging: exactly one record per RPC, when it ends.

The record's message is ``rpc`` and its fields (``extra``) are ``method``,
``peer``, ``code`` (the status code name), ``duration_ms``, ``trace_id`` (hex,
empty outside a sampled trace), ``sub`` when a principal was verified, and for
streams ``requests`` / ``responses`` (messages read through the request
iterator, messages sent). Server faults (INTERNAL, UNKNOWN, DATA_LOSS) log at
ERROR, everything else at INFO; nothing is built when the level is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import trace

from service.auth import current_principal
from service.interceptors._base import CallHook, Context, HookInterceptor, MethodInfo
from service.interceptors._errors import code_of

__all__ = ["LoggingInterceptor"]

_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


class _Call:
    """Per-call state: when it began, its peer and trace, requests read so far."""

    __slots__ = ("peer", "received", "start", "trace_id")

    def __init__(self, start: float, peer: str, trace_id: str, received: int) -> None:
        self.start = start
        self.peer = peer
        self.trace_id = trace_id
        self.received = received


def _current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


async def _counting(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.received += 1
        yield request


class _AccessLog(CallHook[_Call]):
    __slots__ = ("_clock", "_log", "_method", "_streams")

    def __init__(
        self, method: MethodInfo, logger: logging.Logger, clock: Callable[[], float]
    ) -> None:
        self._method = method
        self._log = logger
        self._clock = clock
        self._streams = method.request_streaming or method.response_streaming

    def begin(self, context: Context) -> _Call:
        # Peer and trace id are read now: an abandoned stream ends outside its
        # span, after grpc freed the call (peer() would then crash).
        received = 0 if self._method.request_streaming else 1
        return _Call(self._clock(), context.peer(), _current_trace_id(), received)

    def requests(self, state: _Call, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _counting(requests, state)

    def end(self, state: _Call, context: Context, exc: BaseException | None, sent: int) -> None:
        code = code_of(exc, context)
        level = logging.ERROR if code in _FAULTS else logging.INFO
        if not self._log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": self._method.full_name,
            "peer": state.peer,
            "code": code.name,
            "duration_ms": round((self._clock() - state.start) * 1000.0, 3),
            "trace_id": state.trace_id,
        }
        principal = current_principal.get()
        if principal is not None:
            fields["sub"] = principal.sub
        if self._streams:
            fields["requests"] = state.received
            fields["responses"] = sent
        self._log.log(level, "rpc", extra=fields)


class LoggingInterceptor(HookInterceptor):
    """Logs one JSON-ready record per RPC.

    Args:
        logger: Where records go.
        clock: Monotonic seconds; a seam for tests.
    """

    def __init__(
        self, logger: logging.Logger, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__()
        self._log = logger
        self._clock = clock

    def hook_for(self, method: MethodInfo) -> CallHook[_Call]:
        """Every method is logged."""
        return _AccessLog(method, self._log, self._clock)
