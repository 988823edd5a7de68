"""Hedged calls with gRFC A6's hedging-policy semantics: the policy, the delay, and the loop.

:func:`call_with_hedging` sends the first copy of a call at once and, while no
answer came, one more copy each hedge delay, each to an endpoint that has no
copy of this call in flight, at most ``policy.max_attempts`` copies in all.
The rules, as gRFC A6 writes them:

1. the first OK wins: every other copy is cancelled (the servers see the cancel);
2. a fatal status (a code not in ``policy.non_fatal_codes``) ends the call at
   once with that status, and cancels the other copies;
3. a non-fatal status lets the other copies run and sends the next copy at
   once, without waiting for the delay;
4. server pushback (``grpc-retry-pushback-ms``) on a non-fatal status: a
   valid value delays the next copy by that much; a negative or malformed
   one stops further copies (those in flight still run);
5. every copy after the first takes one token from the shared
   :class:`~client._retry.RetryBudget`; with none left, no more copies;
6. no copy starts once the deadline has passed, and each copy's timeout is
   the per-attempt timeout or the time left, whichever is shorter.

A copy cut short by its own per-attempt timeout while the call's deadline
still had time counts as non-fatal (as the retry loop retries it).

The delay is fixed, or adaptive (:class:`HedgeDelay`): a high percentile of
the method's recent latencies on a typical endpoint, clamped to ``[min_delay,
max_delay]``, and ``max_delay`` until ``warmup`` latencies were seen, so a
cold client does not hedge everything. Time comes through seams (``clock``,
``sleep``) so tests drive the exact timing with a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import grpc

from ._errors import rpc_code
from ._histogram import exact_percentile
from ._retry import AttemptFailed, RetryBudget, is_local_transport_failure, pushback_delay

__all__ = [
    "DEFAULT_NON_FATAL_CODES",
    "Copy",
    "HedgeDelay",
    "HedgeMark",
    "HedgingPolicy",
    "Won",
    "call_with_hedging",
]

T = TypeVar("T")

DEFAULT_NON_FATAL_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE})
#: gRFC A6 caps maxAttempts at 5, for hedging as for retries.
_MAX_COPIES: Final = 5
#: Latencies between two recomputations of an adaptive delay (a pass over the window).
_REFRESH: Final = 32
#: Latencies an endpoint needs in the window before its own percentile counts.
_MIN_PER_ENDPOINT: Final = 10


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive(name: str, value: object) -> None:
    _check(
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0,
        f"{name} must be a finite number > 0, got {value!r}",
    )


def _count(name: str, value: object, low: int) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{name} must be an int >= {low}, got {value!r}",
    )


@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    """How a call is hedged; an immutable, validated value (gRFC A6 ``hedgingPolicy``).

    Attributes:
        max_attempts: copies in all, the first included (2..5; 1 sends no hedge).
        delay: seconds between copies when fixed; ``None`` for the adaptive delay.
        non_fatal_codes: codes that let the other copies run (and send the next at once).
        percentile: the adaptive delay's quantile of recent successful latencies,
            in (0, 1); 0.99 hedges about one healthy call in a hundred.
        min_delay: the adaptive delay's floor (seconds).
        max_delay: the adaptive delay's cap, and the delay during warm-up; when the
            typical endpoint's percentile is above it, every replica is slow
            (overload) and no hedge is sent (the delay is ``inf``) until it is back under.
        warmup: successful latencies seen before the adaptive delay leaves ``max_delay``.
        window: how many recent latencies the adaptive delay keeps.

    Raises:
        ValueError: from the constructor, for any invalid field.
    """

    max_attempts: int = 3
    delay: float | None = None
    non_fatal_codes: frozenset[grpc.StatusCode] = DEFAULT_NON_FATAL_CODES
    percentile: float = 0.99
    min_delay: float = 0.002
    max_delay: float = 0.1
    warmup: int = 50
    window: int = 512

    def __post_init__(self) -> None:
        _count("max_attempts", self.max_attempts, 1)
        _check(
            self.max_attempts <= _MAX_COPIES,
            f"max_attempts must be <= {_MAX_COPIES} (gRFC A6), got {self.max_attempts}",
        )
        if self.delay is not None:
            _positive("delay", self.delay)
        _positive("min_delay", self.min_delay)
        _positive("max_delay", self.max_delay)
        _check(
            self.max_delay >= self.min_delay,
            f"max_delay ({self.max_delay}) must be >= min_delay ({self.min_delay})",
        )
        _positive("percentile", self.percentile)
        _check(self.percentile < 1, f"percentile must be < 1, got {self.percentile!r}")
        _count("warmup", self.warmup, 0)
        _count("window", self.window, 1)
        self._check_codes()

    def _check_codes(self) -> None:
        codes: object = self.non_fatal_codes
        _check(
            isinstance(codes, Iterable) and not isinstance(codes, str | bytes),
            f"non_fatal_codes must be a collection of grpc.StatusCode, got {codes!r}",
        )
        assert isinstance(codes, Iterable)
        frozen = frozenset(codes)
        for code in frozen:
            _check(
                isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK,
                f"non_fatal_codes must hold non-OK grpc.StatusCode values, got {code!r}",
            )
        object.__setattr__(self, "non_fatal_codes", frozen)

    @property
    def adaptive(self) -> bool:
        """Whether the delay follows the method's recent latencies."""
        return self.delay is None

    def with_(self, **changes: Any) -> HedgingPolicy:
        """A copy with ``changes`` applied (validated again); this policy is unchanged."""
        return dataclasses.replace(self, **changes)

    def is_non_fatal(self, error: grpc.RpcError, per_attempt_limited: bool) -> bool:
        """Whether ``error`` lets the other copies run (see the module's rules)."""
        code = rpc_code(error)
        if code in self.non_fatal_codes:
            return True
        if grpc.StatusCode.UNAVAILABLE in self.non_fatal_codes and is_local_transport_failure(
            error
        ):
            return True
        return per_attempt_limited and code is grpc.StatusCode.DEADLINE_EXCEEDED


class HedgeDelay:
    """The hedge delay of one method: fixed, or a clamped percentile of recent latencies.

    The adaptive delay is the percentile of each endpoint's recent latencies,
    then the (lower) median over endpoints: what a typical replica shows. One
    percentile over every call would not do: with one replica of three stalled,
    a third of the latencies are the stall, the p99 becomes the stall itself and
    no hedge would ever go out. A copy that lost the race counts with the time it
    ran, a lower bound of its latency.

    Bounded and cheap: the last ``policy.window`` (endpoint, latency) pairs in a
    ring, the delay recomputed every 32 new ones.
    """

    __slots__ = ("_policy", "_samples", "_seen", "_value")

    def __init__(self, policy: HedgingPolicy) -> None:
        self._policy = policy
        self._samples: deque[tuple[object, float]] = deque(maxlen=policy.window)
        self._seen = 0
        self._value = policy.delay if policy.delay is not None else policy.max_delay

    @property
    def policy(self) -> HedgingPolicy:
        """The policy this delay follows."""
        return self._policy

    @property
    def seen(self) -> int:
        """Latencies observed so far."""
        return self._seen

    def current(self) -> float:
        """Seconds to wait, now, before the next copy of a call of this method."""
        return self._value

    def observe(self, latency: float, endpoint: object = None) -> None:
        """One copy's latency (seconds, from that copy's own start) on ``endpoint``."""
        if not self._policy.adaptive or not (latency >= 0 and math.isfinite(latency)):
            return
        self._samples.append((endpoint, latency))
        self._seen += 1
        warmup = max(1, self._policy.warmup)
        if self._seen >= warmup and (self._seen % _REFRESH == 0 or self._seen == warmup):
            self._refresh()

    def _refresh(self) -> None:
        policy = self._policy
        by_endpoint: dict[object, list[float]] = {}
        for endpoint, latency in self._samples:
            by_endpoint.setdefault(endpoint, []).append(latency)
        groups = [g for g in by_endpoint.values() if len(g) >= _MIN_PER_ENDPOINT]
        ranked = sorted(
            exact_percentile(g, policy.percentile) for g in groups or by_endpoint.values()
        )
        raw = ranked[(len(ranked) - 1) // 2]
        # Above the cap the typical replica itself is slow (overload everywhere): a copy
        # would only add load, so no hedge until it is back under (failures still are).
        self._value = math.inf if raw > policy.max_delay else max(raw, policy.min_delay)

    def __repr__(self) -> str:
        kind = "adaptive" if self._policy.adaptive else "fixed"
        return f"<HedgeDelay {kind} {self._value * 1000:.2f} ms seen={self._seen}>"


@dataclass(slots=True)
class HedgeMark:
    """Which copy an attempt is, for its span, and how it ended if it lost.

    ``lost`` is set before a loser is cancelled; ``outrun`` too when a copy sent
    *after* it answered first: it was then slower by at least one hedge delay,
    which says something of its replica (a loser sent later says nothing).
    """

    number: int
    lost: bool = False
    outrun: bool = False


@dataclass(frozen=True, slots=True)
class Copy:
    """What one copy of a hedged call may use.

    Attributes:
        number: 1 for the first copy, 2 for the first hedge, ...
        timeout: seconds this copy may take (``None``: no limit).
        mark: the copy's mark (``mark.lost`` turns true when it lost the race).
    """

    number: int
    timeout: float | None
    mark: HedgeMark


@dataclass(frozen=True, slots=True)
class Won(Generic[T]):
    """The winning copy's result and number (1: the first copy won, no hedge needed)."""

    value: T
    number: int


Pick = Callable[[frozenset[object], float | None], Awaitable[object]]
Run = Callable[[object, Copy], Awaitable[T]]


@dataclass(eq=False)
class _Flight:
    endpoint: object
    copy: Copy
    per_attempt_limited: bool


@dataclass(eq=False)
class _Hedging(Generic[T]):
    """The state of one hedged call; changed only by :func:`call_with_hedging`'s task."""

    policy: HedgingPolicy
    delay: float
    budget: RetryBudget | None
    deadline: float | None
    per_attempt_timeout: float | None
    clock: Callable[[], float]
    flights: dict[asyncio.Task[T], _Flight] = field(default_factory=dict)
    used: set[object] = field(default_factory=set)
    sent: int = 0
    stopped: bool = False
    next_at: float | None = None
    timer: asyncio.Task[object] | None = None
    timer_due: float | None = None
    last_error: grpc.RpcError | None = None

    def timeout(self) -> tuple[float | None, bool]:
        remaining = None if self.deadline is None else self.deadline - self.clock()
        per_attempt = self.per_attempt_timeout
        if per_attempt is not None and (remaining is None or per_attempt < remaining):
            return per_attempt, True
        return remaining, False

    def may_send(self) -> bool:
        return not self.stopped and self.sent < self.policy.max_attempts

    def due(self) -> bool:
        """Whether the next copy should go now."""
        return self.next_at is not None and self.next_at <= self.clock() and self.may_send()

    def in_flight(self) -> set[object]:
        return {flight.endpoint for flight in self.flights.values()}

    def failed(self, error: grpc.RpcError) -> None:
        """A non-fatal failure: when (and whether) the next copy goes."""
        self.last_error = error
        pushback = pushback_delay(error)
        if pushback is None:
            self.next_at = self.clock()
        elif math.isinf(pushback):
            self.stopped = True
        else:
            self.next_at = self.clock() + pushback


async def call_with_hedging(
    pick: Pick,
    run: Run[T],
    *,
    policy: HedgingPolicy,
    delay: float,
    budget: RetryBudget | None,
    deadline: float | None,
    per_attempt_timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_hedge: Callable[[int], None] | None = None,
    new_call: bool = True,
    discard: Callable[[T], Awaitable[object]] | None = None,
) -> Won[T]:
    """Run copies of one call by the module's rules until one answers OK or none can.

    Args:
        pick: ``pick(used, max_wait)`` returns an endpoint, preferring one not in
            ``used``; raises :class:`AttemptFailed` when there is none.
        run: ``run(endpoint, copy)`` makes one copy on ``endpoint``; raises
            ``grpc.RpcError`` or :class:`AttemptFailed` on failure.
        policy: the hedging policy.
        delay: seconds between copies (the method's :meth:`HedgeDelay.current`).
        budget: the retry budget every copy after the first spends from.
        deadline: absolute time on ``clock`` by which the call must end, or ``None``.
        per_attempt_timeout: the most one copy may take, or ``None``.
        clock: monotonic seconds.
        sleep: waits the given seconds (a fake clock's in tests).
        on_hedge: called with the copy number each time a copy after the first is sent.
        new_call: whether this is a logical call of its own, which deposits in
            ``budget``; False when it runs inside a retry loop's attempt (that
            loop deposited already).
        discard: called with the result of a copy that also answered OK but
            lost (it finished in the same instant as the winner), so a result
            that holds resources (an open stream) can release them.

    Returns:
        The first OK copy's value and number.

    Raises:
        grpc.RpcError: the fatal status, or the last non-fatal one once no copy
            is left to run or send; DEADLINE_EXCEEDED if the deadline had
            passed before the first copy. Any other exception from ``run``
            propagates at once (the other copies cancelled).
    """
    state: _Hedging[T] = _Hedging(policy, delay, budget, deadline, per_attempt_timeout, clock)
    if budget is not None and new_call:
        budget.on_call()
    try:
        await _send(state, pick, run, first=True, on_hedge=on_hedge)
        while True:
            while state.due():
                await _send(state, pick, run, first=False, on_hedge=on_hedge)
            done, fired = await _next_event(state, sleep)
            if fired:
                # The timer's own clock may run a hair ahead of ``clock``: it is due.
                state.next_at = clock()
            won = _settle(state, done)
            if won is not None:
                for flight in state.flights.values():
                    flight.copy.mark.outrun = flight.copy.number < won.number
                return won
    finally:
        await _cancel_rest(state, discard)


async def _next_event(
    state: _Hedging[Any], sleep: Callable[[float], Awaitable[object]]
) -> tuple[set[asyncio.Task[Any]], bool]:
    """Wait for a copy to end or the next copy to fall due: (copies done, whether it is due).

    With the real ``asyncio.sleep`` the wait's own timeout is the timer (one timer
    handle, no task: this runs for every hedged call); an injected ``sleep`` (a
    fake clock's) runs as a task beside the copies.

    Raises:
        grpc.RpcError: no copy is running and none can be sent any more.
    """
    due = state.next_at if state.may_send() else None
    if sleep is asyncio.sleep:
        if not state.flights:
            if due is None:
                raise state.last_error or _deadline_passed()
            await asyncio.sleep(max(0.0, due - state.clock()))
            return set(), True
        timeout = None if due is None else max(0.0, due - state.clock())
        done, _ = await asyncio.wait(
            state.flights, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        return done, not done
    _arm(state, sleep)
    if not state.flights and state.timer is None:
        raise state.last_error or _deadline_passed()
    waiting: set[asyncio.Task[Any]] = set(state.flights)
    if state.timer is not None:
        waiting.add(state.timer)
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    fired = state.timer in done
    if state.timer is not None:
        done.discard(state.timer)
    return done, fired


def _arm(state: _Hedging[Any], sleep: Callable[[float], Awaitable[object]]) -> None:
    """Keep the timer in step with ``next_at``: kept, replaced when it moved, or none."""
    due = state.next_at if state.may_send() else None
    if state.timer is not None and (state.timer_due != due or state.timer.done()):
        state.timer.cancel()
        state.timer = None
    if due is not None and state.timer is None:
        state.timer = asyncio.ensure_future(_sleep(sleep, due - state.clock()))
        state.timer_due = due


async def _sleep(sleep: Callable[[float], Awaitable[object]], seconds: float) -> object:
    return await sleep(max(0.0, seconds))


def _settle(state: _Hedging[T], done: set[asyncio.Task[Any]]) -> Won[T] | None:
    """Account for every finished copy: the winner, a fatal error, or non-fatal failures."""
    for task in [t for t in state.flights if t in done]:
        flight = state.flights.pop(task)
        error = task.exception()
        if error is None:
            return Won(task.result(), flight.copy.number)
        if not isinstance(error, AttemptFailed | grpc.RpcError):
            raise error
        rpc_error = error.error if isinstance(error, AttemptFailed) else error
        if not state.policy.is_non_fatal(rpc_error, flight.per_attempt_limited):
            raise rpc_error
        state.failed(rpc_error)
    return None


async def _send(
    state: _Hedging[T],
    pick: Pick,
    run: Run[T],
    *,
    first: bool,
    on_hedge: Callable[[int], None] | None,
) -> None:
    """Send the next copy if the rules allow it, and schedule the one after."""
    state.next_at = None
    timeout, per_attempt_limited = state.timeout()
    if not state.may_send() or (timeout is not None and timeout <= 0):
        return
    try:
        endpoint = await pick(frozenset(state.used), timeout)
    except AttemptFailed as failed:
        if first:  # Nowhere to send at all: the first copy failed before the wire.
            state.sent += 1
            state.failed(failed.error)
        return
    # A hedge goes to an endpoint with no copy of this call in flight, or not at all.
    if endpoint in state.in_flight():
        return
    if not first and state.budget is not None and not state.budget.try_spend():
        state.stopped = True
        return
    state.sent += 1
    state.used.add(endpoint)
    copy = Copy(state.sent, timeout, HedgeMark(state.sent))
    task = asyncio.ensure_future(run(endpoint, copy))
    state.flights[task] = _Flight(endpoint, copy, per_attempt_limited)
    state.next_at = state.clock() + state.delay if math.isfinite(state.delay) else None
    if not first and on_hedge is not None:
        on_hedge(copy.number)


async def _cancel_rest(
    state: _Hedging[T], discard: Callable[[T], Awaitable[object]] | None
) -> None:
    """Cancel the copies still running (the losers) and the timer; wait for them to end.

    A copy that already failed is only read (its error is not the call's); one
    that answered OK in the same instant as the winner goes to ``discard``. Our
    own cancellation, if it comes meanwhile, is raised once all have ended.
    """
    for flight in state.flights.values():
        flight.copy.mark.lost = True
    copies: list[asyncio.Future[Any]] = list(state.flights)
    tasks = [*copies, state.timer] if state.timer is not None else copies
    state.flights.clear()
    state.timer = None
    for task in tasks:
        task.cancel()
    cancelled_meanwhile = False
    for task in tasks:
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            cancelled_meanwhile |= current is not None and current.cancelling() > 0
        except Exception:  # A loser's own failure is not the call's outcome.
            continue
        else:
            if discard is not None and task in copies:
                await discard(result)
    if cancelled_meanwhile:
        raise asyncio.CancelledError


def _deadline_passed() -> grpc.RpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "deadline passed before the first copy",
        None,
    )
