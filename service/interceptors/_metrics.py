"""Prometheus metrics per RPC: started, handled by code, latency, in flight.

Label values are bound once per method, so a call costs a few locked
increments and one histogram observation. Streams are measured from the
start of the call to the end of the whole stream; a cancelled call counts as
CANCELLED (DEADLINE_EXCEEDED when its deadline passed or was under 50 ms away:
the client's own cancel at its deadline can arrive just before the server's).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter

from service.interceptors._base import CallHook, Context, HookInterceptor, MethodInfo
from service.interceptors._errors import code_of
from service.metrics import ServerMetrics

__all__ = ["MetricsInterceptor"]


class _MethodMetrics(CallHook[float]):
    __slots__ = ("_clock", "_handled", "_handling", "_in_flight", "_labels", "_metrics", "_started")

    def __init__(
        self, method: MethodInfo, metrics: ServerMetrics, clock: Callable[[], float]
    ) -> None:
        self._labels = (method.service, method.name, method.grpc_type)
        self._metrics = metrics
        self._clock = clock
        self._started = metrics.started.labels(*self._labels)
        self._handling = metrics.handling_seconds.labels(*self._labels)
        self._in_flight = metrics.in_flight.labels(method.service, method.name)
        # Bound per code on first use; codes are a closed set of 17.
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def begin(self, context: Context) -> float:
        self._started.inc()
        self._in_flight.inc()
        return self._clock()

    def end(self, state: float, context: Context, exc: BaseException | None, sent: int) -> None:
        self._in_flight.dec()
        self._handling.observe(max(self._clock() - state, 0.0))
        self._handled_counter(code_of(exc, context)).inc()

    def _handled_counter(self, code: grpc.StatusCode) -> Counter:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._metrics.handled.labels(*self._labels, code.name)
            self._handled[code] = counter
        return counter


class MetricsInterceptor(HookInterceptor):
    """Records every RPC in ``metrics``.

    Args:
        metrics: The registry-owning metrics to update.
        clock: Monotonic seconds; a seam for tests.
    """

    def __init__(
        self, metrics: ServerMetrics, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._clock = clock

    def hook_for(self, method: MethodInfo) -> CallHook[float]:
        """Every method is measured."""
        return _MethodMetrics(method, self._metrics, self._clock)
