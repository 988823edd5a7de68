"""Load loops, bounded in count and time, that time every call the same way for any client.

A *call* is a zero-argument coroutine function: one logical GetUser through
whichever client is measured. Failures are counted by status code name, never
raised; latency is measured from the call's start to its end, failed calls
included (a call that failed after its deadline did cost its caller that long).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from client import MeshError

__all__ = ["Call", "LoopResult", "closed_loop", "error_name", "open_loop", "percentile"]

Call = Callable[[], Awaitable[object]]
#: Seconds, after the last call's own deadline, before a loop gives up waiting for it.
_SLACK = 2.0


def error_name(exc: BaseException) -> str:
    """The status code name a failed call counts under (the exception type otherwise)."""
    if isinstance(exc, MeshError):
        return exc.code.name
    if isinstance(exc, grpc.RpcError):
        code: Any = getattr(exc, "code", None)
        value = code() if callable(code) else None
        if isinstance(value, grpc.StatusCode):
            return value.name
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED.name
    return type(exc).__name__


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoopResult:
    """What one loop measured. ``calls == ok + failed``; latencies in seconds, one per call.

    ``cpu`` is this process's CPU time (every thread: the event loop and grpcio's
    own) during the loop. Per call it depends far less on what else the machine
    runs than the call rate does.
    """

    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Calls that ended (successfully or not)."""
        return self.ok + self.failed

    @property
    def rate(self) -> float:
        """Successful calls per second of the loop's wall time."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        """Process CPU microseconds per call that ended (NaN before any)."""
        return self.cpu / self.calls * 1e6 if self.calls else math.nan

    def latency_ms(self, q: float) -> float:
        """The ``q``-th latency percentile in milliseconds."""
        return percentile(self.latencies, q) * 1000.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "errors": dict(sorted(self.errors.items())),
            "elapsed_s": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "cpu_us_per_call": round(self.cpu_us_per_call, 1),
            "p50_ms": round(self.latency_ms(50), 2),
            "p99_ms": round(self.latency_ms(99), 2),
            "max_ms": round(self.latency_ms(100), 2),
        }

    async def timed(self, call: Call) -> None:
        """Run one call and record it (cancellation passes through unrecorded)."""
        started = time.perf_counter()
        try:
            await call()
        except Exception as exc:  # Every failure counts, by code.
            self.failed += 1
            self.errors[error_name(exc)] += 1
        else:
            self.ok += 1
        self.latencies.append(time.perf_counter() - started)


async def closed_loop(
    call: Call, *, concurrency: int, max_calls: int, duration: float, call_timeout: float
) -> LoopResult:
    """``concurrency`` workers call back to back until ``max_calls`` started or ``duration`` ended.

    ``call_timeout`` must be the deadline each call carries: workers still
    running that long (plus a slack) after the end are cancelled and not counted.
    """
    result = LoopResult()
    started, cpu = time.perf_counter(), time.process_time()
    end = started + duration
    claimed = 0

    async def worker() -> None:
        nonlocal claimed
        while claimed < max_calls and time.perf_counter() < end:
            claimed += 1
            await result.timed(call)

    await _bounded([worker() for _ in range(concurrency)], duration + call_timeout + _SLACK)
    result.elapsed = time.perf_counter() - started
    result.cpu = time.process_time() - cpu
    return result


async def open_loop(
    call: Call,
    *,
    rate: float,
    duration: float,
    call_timeout: float,
    events: Mapping[float, Callable[[], object]] | None = None,
) -> LoopResult:
    """Start call ``i`` at ``i / rate`` seconds, whatever earlier calls do, for ``duration``.

    The offered rate never drops when the service slows down: ``rate * duration``
    calls are started, each as its own task. ``events`` maps an offset in
    seconds to a callable run then (a replica killed at 2 s).
    """
    result = LoopResult()
    started, cpu = time.perf_counter(), time.process_time()
    total = int(rate * duration)
    pending = sorted((events or {}).items())
    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        due = i / rate
        while pending and pending[0][0] <= due:
            await _sleep_until(started + pending[0][0])
            pending.pop(0)[1]()
        await _sleep_until(started + due)
        tasks.append(asyncio.create_task(result.timed(call)))
    for _, action in pending:  # Events past the last call still happen, in order.
        action()
    await _bounded(tasks, call_timeout + _SLACK)
    result.elapsed = time.perf_counter() - started
    result.cpu = time.process_time() - cpu
    return result


async def _sleep_until(moment: float) -> None:
    wait = moment - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)


async def _bounded(aws: Sequence[Awaitable[None]], bound: float) -> None:
    """Await every awaitable, cancelling those still running after ``bound`` seconds."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, timeout=bound)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
