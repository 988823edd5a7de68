"""Hedged calls with gRFC A6's hedging-policy semantics: the policy, the delay, and the loop.

:meth:`Hedger.call` (and :func:`call_with_hedging`, for a single call) sends
the first copy of a call at once and, while no answer came, one more copy each
hedge delay, each to an endpoint that has no copy of this call in flight, at
most ``policy.max_attempts`` copies in all.
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
cold client does not hedge everything. It is recomputed at once when a few
latencies since the last recomputation were above it (the latencies shifted).
Time comes through seams (``clock``, ``sleep``) so tests drive the exact
timing with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import grpc

from ._errors import rpc_code
from ._hedge_delay import HedgeDelay
from ._retry import (
    AttemptFailed,
    RetryBudget,
    bounded_timeout,
    is_local_transport_failure,
    pushback_delay,
    time_left,
)

__all__ = [
    "DEFAULT_NON_FATAL_CODES",
    "Copy",
    "HedgeDelay",
    "HedgeMark",
    "HedgeTimer",
    "Hedger",
    "HedgingPolicy",
    "Won",
    "call_with_hedging",
]

T = TypeVar("T")

DEFAULT_NON_FATAL_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE})
#: gRFC A6 caps maxAttempts at 5, for hedging as for retries.
_MAX_COPIES: Final = 5
#: How far ahead of a due time a wake-up may come and still fire it: a timer's clock may
#: run a hair ahead of the one the due time was read from.
_EARLY: Final = 1e-9
#: ``_Hedging.late_on`` while the first copy is not (or no longer) past its hedge time.
_NOT_LATE: Final = object()
#: The clock of asyncio's own loops (``time.monotonic``), the one the timer's due times use.
_MONOTONIC_LOOP_TIME: Final = asyncio.BaseEventLoop.time
#: What the first copy's pick excludes.
_NOTHING_USED: Final[frozenset[object]] = frozenset()


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


@dataclass(slots=True)
class Copy(HedgeMark):
    """One copy of a hedged call: what it may use, and its own :class:`HedgeMark`.

    ``number`` and ``timeout`` never change once made; the mark's ``lost`` and
    ``outrun`` are set when the copy lost the race. A copy is its own mark (one
    object per copy, not two), and a call's first copy is the object that runs
    the call (:class:`_FirstCopy`), so a call answered by its first copy makes
    no copy of its own. Not frozen: a frozen dataclass sets each field through
    ``object.__setattr__``, which made it three times as dear to build.

    Attributes:
        number: 1 for the first copy, 2 for the first hedge, ...
        timeout: seconds this copy may take (``None``: no limit).
    """

    timeout: float | None = None


@dataclass(slots=True)
class Won(Generic[T]):
    """The winning copy's result and number (1: the first copy won, no hedge needed).

    Never changed once made; not frozen for the reason :class:`Copy` gives.
    """

    value: T
    number: int


class HedgeTimer:
    """Tells each waiting first copy when its hedge delay has passed, from one wake-up for all.

    A timer of asyncio's own per call (``loop.call_at``) is a Python-level
    ``TimerHandle`` with a copy of the context, pushed on asyncio's heap with
    Python comparisons and nearly always cancelled again: about 18,000
    instructions a call, more than a tenth of the client's own path. Here a
    call appends an entry to a queue and does nothing when it ends: an entry
    whose copy is no longer waiting is dropped when the wake-up comes to it.
    One wake-up is kept, for the earliest entry that was waiting when it was set.

    Entries come in the order they are due as long as the delay holds still
    (one method, or methods with one delay), so the queue is a deque; one due
    before the last entry's (a shorter delay: another method's, or a new
    estimate) goes on a heap beside it. Either way every entry fires at its
    due time.

    Args:
        clock: monotonic seconds for the due times, with an injected ``sleep``.
        sleep: ``asyncio.sleep`` to wake by the event loop's own timer
            (``call_later``; due times then on ``time.monotonic``, the clock of
            asyncio's loop, whatever ``clock`` is); any other (a fake clock's in
            tests) to wake by a task that sleeps with it until the next due time.
    """

    __slots__ = (
        "_clock",
        "_context",
        "_due",
        "_early",
        "_late",
        "_numbers",
        "_queue",
        "_sleep",
        "_waiting",
        "_wake_up",
    )

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._sleep = None if sleep is asyncio.sleep else sleep
        self._clock = time.monotonic if self._sleep is None else clock
        #: (due, first copy), in due order.
        self._queue: deque[tuple[float, _FirstCopy[Any]]] = deque()
        #: (due, arrival number, first copy) for entries due before the queue's last.
        self._early: list[tuple[float, int, _FirstCopy[Any]]] = []
        self._numbers = itertools.count()
        self._wake_up: asyncio.TimerHandle | asyncio.Task[None] | None = None
        #: When the wake-up is set for (None: none set).
        self._due: float | None = None
        #: Per endpoint: first copies there past their hedge time and still running.
        self._late: dict[object, int] = {}
        #: What the wake-up runs in: a context of its own, no call's.
        self._context = contextvars.Context()
        #: Entries whose copy still waits for its hedge time.
        self._waiting = 0

    def __len__(self) -> int:
        """Entries held, those whose copy ended but not yet dropped included."""
        return len(self._queue) + len(self._early)

    def add(self, first: _FirstCopy[Any], delay: float) -> None:
        """Call ``first._fire()`` ``delay`` seconds from now if it is still waiting then."""
        due = self._clock() + delay
        self._waiting += 1
        queue = self._queue
        if not queue or queue[-1][0] <= due:
            queue.append((due, first))
        else:
            heapq.heappush(self._early, (due, next(self._numbers), first))
        if self._due is None or due < self._due:
            self._set(due)

    def answered(self) -> None:
        """A waiting copy ended before its hedge time; with none left waiting, stop the wake-up.

        A wake-up that would find nothing to fire costs the event loop a turn of
        its own (a thread woken from sleep: measured here as about a tenth of a
        call's CPU at one call in flight); a cancelled one costs nothing once it
        reaches the front of asyncio's heap. Entries of copies that ended are all
        that is left then, so they go too.
        """
        self._waiting -= 1
        if self._waiting <= 0:  # Below only for a copy that outlived close().
            self._waiting = 0
            self._queue.clear()
            self._early.clear()
            if self._wake_up is not None:
                self._cancel()

    def late(self, endpoint: object) -> int:
        """First copies on ``endpoint`` that are past their hedge time and still running."""
        return self._late.get(endpoint, 0)

    def _late_begins(self, endpoint: object) -> None:
        self._late[endpoint] = self._late.get(endpoint, 0) + 1

    def _late_ends(self, endpoint: object) -> None:
        left = self._late[endpoint] - 1
        if left:
            self._late[endpoint] = left
        else:
            del self._late[endpoint]

    def close(self) -> None:
        """Drop every entry and the wake-up; no copy is told anything any more."""
        self._queue.clear()
        self._early.clear()
        self._waiting = 0
        self._cancel()

    def _set(self, due: float) -> None:
        if self._wake_up is not None:
            self._wake_up.cancel()
        self._due = due
        loop = asyncio.get_running_loop()
        # The wake-up runs in the timer's own empty context, no call's: each hedger
        # starts in its own call's (see _FirstCopy._fire).
        if self._sleep is None and type(loop).time is _MONOTONIC_LOOP_TIME:
            # Due times are on the loop's own clock: call_at, not call_later (whose
            # extra frame and clock read cost 3,900 instructions a call at one in flight).
            self._wake_up = loop.call_at(due, self._wake, context=self._context)
            return
        wait = max(0.0, due - self._clock())
        if self._sleep is None:  # A loop of another clock (uvloop's): by the time left.
            self._wake_up = loop.call_later(wait, self._wake, context=self._context)
        else:
            self._wake_up = loop.create_task(self._sleep_then_wake(wait), context=self._context)

    def _cancel(self) -> None:
        if self._wake_up is not None:
            self._wake_up.cancel()
            self._wake_up = None
        self._due = None

    async def _sleep_then_wake(self, wait: float) -> None:
        assert self._sleep is not None
        await self._sleep(wait)
        self._wake_up = None  # Done: not for the next _set to cancel.
        self._wake()

    def _wake(self) -> None:
        """Fire the entries due, drop those no longer waiting, set the next wake-up."""
        self._wake_up = None
        self._due = None
        now = self._clock() + _EARLY
        queue, early = self._queue, self._early
        self._waiting -= _fire_due(queue, queue.popleft, now)
        self._waiting -= _fire_due(early, functools.partial(heapq.heappop, early), now)
        if queue or early:
            self._set(min(queue[0][0] if queue else math.inf, early[0][0] if early else math.inf))


def _fire_due(
    entries: Sequence[tuple[Any, ...]], pop_first: Callable[[], object], now: float
) -> int:
    """Take entries off the front (due time first, copy last) while due or no longer waiting.

    Returns:
        How many were fired (waiting no longer).
    """
    fired = 0
    while entries:
        head = entries[0]
        first: _FirstCopy[Any] = head[-1]
        if first._waiting and head[0] > now:
            break
        pop_first()
        if first._waiting:
            fired += 1
            first._fire()
    return fired


Pick = Callable[[frozenset[object], float | None], Awaitable[object]]
#: A pick that does not wait: an endpoint, or None when only :data:`Pick` can tell.
PickNow = Callable[[frozenset[object]], object | None]
#: ``run(endpoint, copy, *args)``: one copy on ``endpoint``; ``args`` are the call's own.
Run = Callable[..., Awaitable[T]]


@dataclass(eq=False)
class _Flight:
    endpoint: object
    copy: Copy
    per_attempt_limited: bool


class Hedger(Generic[T]):
    """What the hedged calls of one method share, made once; :meth:`call` makes one call.

    The policy, the budget, the picks, the timer and the hooks are the same for
    every call of a method, so a client keeps one of these per hedged method and
    a call brings only its own part: what runs a copy, its deadline and its
    delay. The rules are the module's; :func:`call_with_hedging` is the same for
    a single call.

    Args:
        pick: ``pick(used, max_wait)`` returns an endpoint, preferring one not in
            ``used``; raises :class:`AttemptFailed` when there is none. It waits,
            at most ``max_wait`` seconds, only while discovery has not answered
            yet; the first copy gives it the call's time left.
        policy: the hedging policy.
        budget: the retry budget every copy after the first spends from.
        timer: the :class:`HedgeTimer` the calls share.
        per_attempt_timeout: the most one copy may take, or ``None``.
        clock: monotonic seconds.
        sleep: waits the given seconds (a fake clock's in tests).
        on_hedge: called with the copy number each time a copy after the first is sent.
        on_won: called with the winning copy's number when a copy after the first won.
        discard: called with the result of a copy that also answered OK but
            lost (it finished in the same instant as the winner), so a result
            that holds resources (an open stream) can release them.
        pick_now: asked first for each copy's endpoint, without waiting; when it
            gives None, ``pick`` is awaited. It spares the common pick (one
            that needs no wait) a coroutine.
    """

    __slots__ = (
        "budget",
        "clock",
        "discard",
        "on_hedge",
        "on_won",
        "per_attempt_timeout",
        "pick",
        "pick_now",
        "policy",
        "sleep",
        "timer",
    )

    def __init__(
        self,
        pick: Pick,
        *,
        policy: HedgingPolicy,
        budget: RetryBudget | None,
        timer: HedgeTimer,
        per_attempt_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_hedge: Callable[[int], None] | None = None,
        on_won: Callable[[int], None] | None = None,
        discard: Callable[[Any], Awaitable[object]] | None = None,
        pick_now: PickNow | None = None,
    ) -> None:
        self.pick = pick
        self.policy = policy
        self.budget = budget
        self.timer = timer
        self.per_attempt_timeout = per_attempt_timeout
        self.clock = clock
        self.sleep = sleep
        self.on_hedge = on_hedge
        self.on_won = on_won
        self.discard = discard
        self.pick_now = pick_now

    def call(
        self,
        run: Run[T],
        deadline: float | None,
        delay: float,
        *args: Any,
        new_call: bool = True,
    ) -> Coroutine[Any, Any, T]:
        """One hedged call; returns the coroutine to await for the winning copy's value.

        A function, not a coroutine of its own: one frame less per call. The
        first copy runs in the caller's own task, its hedge time an entry in
        the shared timer, so a call answered within the hedge delay (nearly
        every call) costs no task, no wait and no timer handle of its own;
        once the delay passed, the copies after it run from a task of their own
        (:class:`_FirstCopy`).

        Args:
            run: ``run(endpoint, copy, *args)`` makes one copy on ``endpoint``;
                raises ``grpc.RpcError`` or :class:`AttemptFailed` on failure.
            deadline: absolute time on ``clock`` by which the call must end, or ``None``.
            delay: seconds between copies (the method's :meth:`HedgeDelay.current`).
            args: passed on to every ``run`` of this call.
            new_call: whether this is a logical call of its own, which deposits in
                the budget; False when it runs inside a retry loop's attempt (that
                loop deposited already).

        Raises:
            grpc.RpcError: the fatal status, or the last non-fatal one once no copy
                is left to run or send; DEADLINE_EXCEEDED if the deadline had
                passed before the first copy. Any other exception from ``run``
                propagates at once (the other copies cancelled).
        """
        if new_call and self.budget is not None:
            self.budget.on_call()
        return _FirstCopy(self, run, args, deadline, delay).run()


class _Hedging(Generic[T]):
    """The state of one hedged call past its first copy alone; changed by one task at a time.

    Made only when a call needs more than its first copy (the hedge delay
    passed, or the first copy failed or could not go): nearly every call never
    makes one. That task is the caller's until the hedge delay first passes,
    then the hedger's (:class:`_FirstCopy`): the two never change it in the
    same stretch. A flight is a copy's task, or for a first copy that runs in
    the caller's task, a future the caller completes with that copy's outcome.
    """

    __slots__ = (
        "args",
        "deadline",
        "delay",
        "flights",
        "last_error",
        "late_on",
        "next_at",
        "of",
        "run",
        "sent",
        "stopped",
        "timer",
        "timer_due",
        "used",
    )

    def __init__(
        self,
        hedger: Hedger[T],
        run: Run[T],
        args: tuple[Any, ...],
        deadline: float | None,
        delay: float,
    ) -> None:
        #: What every call of the method shares: policy, budget, picks, timer, hooks.
        self.of = hedger
        self.run = run
        self.args = args
        self.deadline = deadline
        self.delay = delay
        #: The first copy's endpoint while that copy runs past its hedge time (see _send).
        self.late_on: object = _NOT_LATE
        self.flights: dict[asyncio.Future[T], _Flight] = {}
        self.used: set[object] = set()
        self.sent = 0
        self.stopped = False
        self.next_at: float | None = None
        self.timer: asyncio.Task[object] | None = None
        self.timer_due: float | None = None
        self.last_error: grpc.RpcError | None = None

    def timeout(self) -> tuple[float | None, bool]:
        return bounded_timeout(self.of.per_attempt_timeout, self.deadline, self.of.clock)

    def may_send(self) -> bool:
        return not self.stopped and self.sent < self.of.policy.max_attempts

    def due(self) -> bool:
        """Whether the next copy should go now.

        Not while a copy has ended unread: its answer (say, one that came in the
        same turn of the event loop as the hedge time) is read first, and a copy
        sent meanwhile would only be cancelled.
        """
        return (
            self.next_at is not None
            and self.next_at <= self.of.clock()
            and self.may_send()
            and not any(flight.done() for flight in self.flights)
        )

    def in_flight(self) -> set[object]:
        return {flight.endpoint for flight in self.flights.values()}

    def failed(self, error: grpc.RpcError) -> None:
        """A non-fatal failure: when (and whether) the next copy goes."""
        self.last_error = error
        pushback = pushback_delay(error)
        if pushback is None:
            self.next_at = self.of.clock()
        elif math.isinf(pushback):
            self.stopped = True
        else:
            self.next_at = self.of.clock() + pushback

    def ended(self, error: BaseException, per_attempt_limited: bool) -> None:
        """A copy failed: raise what ends the call, or note a non-fatal failure."""
        if not isinstance(error, AttemptFailed | grpc.RpcError):
            raise error
        rpc_error = error.error if isinstance(error, AttemptFailed) else error
        if not self.of.policy.is_non_fatal(rpc_error, per_attempt_limited):
            raise rpc_error
        self.failed(rpc_error)


def call_with_hedging(
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
    timer: HedgeTimer | None = None,
    pick_now: PickNow | None = None,
) -> Coroutine[Any, Any, Won[T]]:
    """Run copies of one call by the module's rules until one answers OK or none can.

    One call with a :class:`Hedger` of its own (the arguments are
    :class:`Hedger`'s and :meth:`Hedger.call`'s; ``run`` is called as
    ``run(endpoint, copy)``); a caller that makes many calls of one method
    keeps a :class:`Hedger` instead, and spares each call building one.

    Args:
        timer: the :class:`HedgeTimer` shared by the caller's calls; ``None``
            for one of this call's own, made on ``clock`` and ``sleep`` and
            closed when the call ends.

    Returns:
        The coroutine to await for the first OK copy's value and number.
    """
    own = None
    if timer is None:
        own = timer = HedgeTimer(clock, sleep)
    numbers: list[int] = []
    hedger: Hedger[T] = Hedger(
        pick,
        policy=policy,
        budget=budget,
        timer=timer,
        per_attempt_timeout=per_attempt_timeout,
        clock=clock,
        sleep=sleep,
        on_hedge=on_hedge,
        on_won=numbers.append,
        discard=discard,
        pick_now=pick_now,
    )
    return _numbered(hedger.call(run, deadline, delay, new_call=new_call), numbers, own)


async def _numbered(call: Awaitable[T], numbers: list[int], own_timer: HedgeTimer | None) -> Won[T]:
    try:
        value = await call
    finally:
        if own_timer is not None:
            own_timer.close()
    return Won(value, numbers[-1] if numbers else 1)


class _FirstCopy(Copy, Generic[T]):
    """One hedged call, seen from its first copy, which runs in the caller's task; that copy too.

    Until the hedge delay passes, the call is just this copy: if it answers,
    that is the call's outcome, and if it fails the caller goes on to the loop
    (:func:`_loop`) itself. When the delay passes first, the timer starts the
    loop as a task of its own, the *hedger*, with this copy as one of its
    flights: a future that this task completes with the copy's outcome. The
    hedger decides the race; when this copy lost, it cancels that future, and
    the future's callback cancels the caller's task, which unwinds the copy
    (the server sees the cancel) and takes the hedger's outcome. The caller's
    own cancellation is told apart by the task's cancel count, as
    ``asyncio.timeout`` does.

    It is the first copy's :class:`Copy` (number 1) as well, and makes the
    call's :class:`_Hedging` state only when the call needs more than this copy.
    """

    __slots__ = (
        "_args",
        "_caller",
        "_context",
        "_deadline",
        "_delay",
        "_endpoint",
        "_flight",
        "_hedger",
        "_interrupted",
        "_limited",
        "_of",
        "_run",
        "_running",
        "_state",
        "_waiting",
    )

    def __init__(
        self,
        of: Hedger[T],
        run: Run[T],
        args: tuple[Any, ...],
        deadline: float | None,
        delay: float,
    ) -> None:
        self.number = 1
        self.lost = self.outrun = False
        self.timeout = None
        self._of = of
        #: What runs the copies and their arguments; None once this copy answered the call.
        self._run: Run[T] | None = run
        self._args = args
        self._deadline = deadline
        self._delay = delay
        #: The call's state past this copy alone; None until it is needed.
        self._state: _Hedging[T] | None = None
        self._caller: asyncio.Task[Any] | None = None
        #: The caller's context (its span, for one), for the hedger to run in: the timer
        #: fires this copy from a wake-up that any call of the client may have set.
        self._context: contextvars.Context | None = None
        #: Whether this copy's hedge time is still to come (an entry in the timer).
        self._waiting = False
        self._flight: asyncio.Future[T] | None = None
        self._hedger: asyncio.Task[Won[T]] | None = None
        self._running = False
        self._interrupted = False
        self._endpoint: object = None
        self._limited = False

    async def run(self) -> T:
        """The call's outcome: this copy's, or else the loop's (:func:`_loop`)."""
        of = self._of
        run = self._run
        assert run is not None
        self._caller = asyncio.current_task()
        timeout, self._limited = bounded_timeout(of.per_attempt_timeout, self._deadline, of.clock)
        self.timeout = timeout
        if timeout is not None and timeout <= 0:  # Nothing to run or send: the loop fails it.
            return self._value(await _loop(self._hedging(sent=False)))
        endpoint = None if of.pick_now is None else of.pick_now(_NOTHING_USED)
        if endpoint is None:
            try:
                # A pick waits only for discovery's first answer, before any copy went
                # anywhere: the call's own time bounds it, not a copy's timeout.
                endpoint = await of.pick(_NOTHING_USED, time_left(self._deadline, of.clock))
            except AttemptFailed as failed:  # Nowhere to send at all: failed before the wire.
                state = self._hedging(sent=False)
                state.sent += 1
                state.failed(failed.error)
                return self._value(await _loop(state))
            # The copy's timeout runs from when it is sent, within what is left of the call.
            timeout, self._limited = bounded_timeout(
                of.per_attempt_timeout, self._deadline, of.clock
            )
            self.timeout = timeout
            if timeout is not None and timeout <= 0:
                return self._value(await _loop(self._hedging(sent=False)))
        self._endpoint = endpoint
        # Whether a copy could ever follow this one without a failure first (NaN: no).
        if self._delay < math.inf and of.policy.max_attempts > 1:
            self._waiting = True
            self._context = contextvars.copy_context()
            of.timer.add(self, self._delay)
        self._running = True
        try:
            value = await run(endpoint, self, *self._args)
        except asyncio.CancelledError:
            self._stop()
            return await self._cancelled()
        except Exception as error:
            self._stop()
            if self._hedger is None:
                state = self._hedging(sent=True)
                state.ended(error, self._limited)  # Raises what ends the call.
                return self._value(await _loop(state))
            if self._flight is not None and not self._flight.done():
                self._flight.set_exception(error)
            return self._value(await self._hedger)
        self._running = False  # What _stop does, inline: nearly every call.
        if self._waiting:
            self._waiting = False
            of.timer.answered()
        hedging = self._state
        if hedging is not None and hedging.late_on is not _NOT_LATE:
            self._stop()
        hedger = self._hedger
        if hedger is None:
            # The timer may hold this copy for a while yet: let go of the call's own now.
            self._run = self._caller = self._context = self._state = None
            self._args = ()
            return value
        if self._flight is not None and not self._flight.done():
            self._flight.set_result(value)
        elif of.discard is not None:  # It lost in this same instant.
            await of.discard(value)
        return self._value(await hedger)

    def _hedging(self, *, sent: bool) -> _Hedging[T]:
        """The call's state past this copy alone, made now if need be (``sent``: this copy went)."""
        state = self._state
        if state is None:
            assert self._run is not None
            state = self._state = _Hedging(
                self._of, self._run, self._args, self._deadline, self._delay
            )
            if sent:
                state.sent = 1
                state.used.add(self._endpoint)
        return state

    def _value(self, won: Won[T]) -> T:
        if won.number > 1 and self._of.on_won is not None:
            self._of.on_won(won.number)
        return won.value

    def _stop(self) -> None:
        """The copy ended: nothing to wait for (the timer drops the entry), and not late."""
        self._running = False
        if self._waiting:
            self._waiting = False
            self._of.timer.answered()
        state = self._state
        if state is not None and state.late_on is not _NOT_LATE:
            state.of.timer._late_ends(state.late_on)
            state.late_on = _NOT_LATE

    def _fire(self) -> None:
        """The delay passed with no answer: start the hedger, this copy one of its flights."""
        self._waiting = False
        if not self._running or self._run is None:
            return
        state = self._hedging(sent=True)
        state.late_on = self._endpoint
        state.of.timer._late_begins(self._endpoint)
        if state.of.budget is not None and not state.of.budget.can_spend():
            # No hedge could go (rule 5): the copy goes on alone, no hedger to start.
            state.stopped = True
            return
        loop = asyncio.get_running_loop()
        flight: asyncio.Future[T] = loop.create_future()
        flight.add_done_callback(self._lost)
        self._flight = flight
        state.flights[flight] = _Flight(self._endpoint, self, self._limited)
        state.next_at = state.of.clock()
        # In the caller's context, not the wake-up's: the copies it sends, their spans and
        # the "hedge" event belong to this call.
        self._hedger = loop.create_task(_loop(state), context=self._context)

    def _lost(self, flight: asyncio.Future[T]) -> None:
        """The hedger cancelled this copy's flight: cancel the copy, in the caller's task."""
        if flight.cancelled() and self._running and self._caller is not None:
            self._interrupted = True
            self._caller.cancel()

    async def _cancelled(self) -> T:
        """The copy was cancelled: by the hedger (it lost) or by the caller."""
        caller = asyncio.current_task()
        ours = self._interrupted and caller is not None and caller.uncancel() == 0
        hedger = self._hedger
        if ours and hedger is not None:
            return self._value(await hedger)
        self.lost = True
        if hedger is not None:
            await _abandon(hedger, self._of.discard)
        raise asyncio.CancelledError


async def _loop(state: _Hedging[T]) -> Won[T]:
    """Send and settle copies by the rules until one wins or none can; cancel the rest."""
    try:
        while True:
            while state.due():
                await _send(state)
            done, fired = await _next_event(state)
            if fired:
                # The timer's own clock may run a hair ahead of ``clock``: it is due.
                state.next_at = state.of.clock()
            won = _settle(state, done)
            if won is not None:
                for flight in state.flights.values():
                    flight.copy.outrun = flight.copy.number < won.number
                return won
    finally:
        await _cancel_rest(state)


async def _next_event(state: _Hedging[Any]) -> tuple[set[asyncio.Future[Any]], bool]:
    """Wait for a copy to end or the next copy to fall due: (copies done, whether it is due).

    With the real ``asyncio.sleep`` the wait's own timeout is the timer (one timer
    handle, no task); an injected ``sleep`` (a fake clock's) runs as a task
    beside the copies.

    Raises:
        grpc.RpcError: no copy is running and none can be sent any more.
    """
    due = state.next_at if state.may_send() else None
    if state.of.sleep is asyncio.sleep:
        if not state.flights:
            if due is None:
                raise state.last_error or _deadline_passed()
            await asyncio.sleep(max(0.0, due - state.of.clock()))
            return set(), True
        timeout = None if due is None else max(0.0, due - state.of.clock())
        done, _ = await asyncio.wait(
            state.flights, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        return done, not done
    _arm(state)
    if not state.flights and state.timer is None:
        raise state.last_error or _deadline_passed()
    waiting: set[asyncio.Future[Any]] = set(state.flights)
    if state.timer is not None:
        waiting.add(state.timer)
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    fired = state.timer in done
    if state.timer is not None:
        done.discard(state.timer)
    return done, fired


def _arm(state: _Hedging[Any]) -> None:
    """Keep the timer in step with ``next_at``: kept, replaced when it moved, or none."""
    due = state.next_at if state.may_send() else None
    if state.timer is not None and (state.timer_due != due or state.timer.done()):
        state.timer.cancel()
        state.timer = None
    if due is not None and state.timer is None:
        state.timer = asyncio.ensure_future(_sleep(state.of.sleep, due - state.of.clock()))
        state.timer_due = due


async def _sleep(sleep: Callable[[float], Awaitable[object]], seconds: float) -> object:
    return await sleep(max(0.0, seconds))


def _settle(state: _Hedging[T], done: set[asyncio.Future[Any]]) -> Won[T] | None:
    """Account for every finished copy: the winner, a fatal error, or non-fatal failures."""
    for future in [f for f in state.flights if f in done]:
        flight = state.flights.pop(future)
        error = future.exception()
        if error is None:
            return Won(future.result(), flight.copy.number)
        state.ended(error, flight.per_attempt_limited)
    return None


async def _send(state: _Hedging[T]) -> None:
    """Send the next copy (a hedge) if the rules allow it, and schedule the one after."""
    state.next_at = None
    timeout, per_attempt_limited = state.timeout()
    if not state.may_send() or (timeout is not None and timeout <= 0):
        return
    try:
        endpoint = await state.of.pick(frozenset(state.used), timeout)
    except AttemptFailed:
        return
    # A hedge goes to an endpoint with no copy of this call in flight, or not at all.
    if endpoint in state.in_flight():
        return
    # Nor, for now, to one with as many late first copies as this call's: when every
    # endpoint has them at once, the slowness is not the endpoint's (a saturated client,
    # or every replica at once), and a copy elsewhere would wait as long. Asked again
    # a delay later.
    late_on, timer = state.late_on, state.of.timer
    if late_on is not _NOT_LATE and timer.late(endpoint) >= timer.late(late_on):
        state.next_at = state.of.clock() + state.delay
        return
    if state.of.budget is not None and not state.of.budget.try_spend():
        state.stopped = True
        return
    state.sent += 1
    state.used.add(endpoint)
    copy = Copy(state.sent, timeout=timeout)
    task = asyncio.ensure_future(state.run(endpoint, copy, *state.args))
    state.flights[task] = _Flight(endpoint, copy, per_attempt_limited)
    state.next_at = state.of.clock() + state.delay if math.isfinite(state.delay) else None
    if state.of.on_hedge is not None:
        state.of.on_hedge(copy.number)


async def _cancel_rest(state: _Hedging[T]) -> None:
    """Cancel the copies still running (the losers) and the timer; wait for them to end.

    A copy that already failed is only read (its error is not the call's); one
    that answered OK in the same instant as the winner goes to ``discard``. Our
    own cancellation, if it comes meanwhile, is raised once all have ended.
    """
    for flight in state.flights.values():
        flight.copy.lost = True
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
            if state.of.discard is not None and task in copies:
                await state.of.discard(result)
    if cancelled_meanwhile:
        raise asyncio.CancelledError


async def _abandon(
    hedger: asyncio.Task[Won[T]], discard: Callable[[T], Awaitable[object]] | None
) -> None:
    """Cancel the hedger (the caller gave up) and wait until it ended; discard a winner it had.

    The caller is being cancelled already: a further cancel while waiting does
    not cut the wait short, so no copy outlives the call.
    """
    hedger.cancel()
    while not hedger.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((hedger,))
    if hedger.cancelled() or hedger.exception() is not None:
        return  # Its outcome is nobody's now.
    if discard is not None:
        await discard(hedger.result().value)


def _deadline_passed() -> grpc.RpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "deadline passed before the first copy",
        None,
    )
