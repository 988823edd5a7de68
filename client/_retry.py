"""Retries: the policy (an immutable value), the budget, and the retry loop.

The rules, in the order :func:`call_with_retries` applies them after a failed
attempt (docs/client-retries.md explains the why):

1. at most ``policy.max_attempts`` attempts;
2. only idempotent calls are retried;
3. only retryable failures: a code in ``policy.retryable_codes``; an attempt
   that ran out of its per-attempt timeout while the call's deadline still has
   time; ``UNKNOWN: Stream removed`` when ``policy.retry_stream_removed``;
4. the server's ``grpc-retry-pushback-ms`` replaces the computed backoff; a
   negative or malformed value means "do not retry";
5. the retry must start before the deadline (no sleep reaches it);
6. the budget must have a token for it.

Time and randomness come through seams (``clock``, ``sleep``, ``rng``) so tests
drive them with a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard, TypeVar

import grpc

from ._errors import rpc_code, rpc_message, rpc_trailing_metadata

__all__ = [
    "DEFAULT_RETRYABLE_CODES",
    "PUSHBACK_KEY",
    "Attempt",
    "AttemptFailed",
    "RetryBudget",
    "RetryPolicy",
    "bounded_timeout",
    "call_with_retries",
    "is_stream_removed",
    "pushback_delay",
    "time_left",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"
DEFAULT_RETRYABLE_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE})

# Status messages grpcio releases have used for a stream reset by the peer that
# surfaced as UNKNOWN instead of UNAVAILABLE (grpc/grpc#34076).
_STREAM_REMOVED_MESSAGES: Final = frozenset({"stream removed"})
# What grpcio's aio layer raises, as INTERNAL, when it cannot send on a call whose
# connection broke (a replica killed while a client stream was being written). The
# failure is local and says nothing the server decided: a server's INTERNAL carries
# its own message and trailers.
_LOCAL_CORE_FAILURE: Final = "internal error from core"
_PUSHBACK_PATTERN: Final = re.compile(r"-?[0-9]+")
_INT32_MAX: Final = 2**31 - 1
# Float sums of ratios (0.2 * 5) may land a hair below 1.0.
_EPSILON: Final = 1e-9


# -- Policy ----------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    _check(
        _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0),
        f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}",
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried; an immutable, validated value.

    Attributes:
        max_attempts: attempts in total, the first one included (1 = no retries).
        initial_backoff: seconds before the first retry (the cap of its jitter).
        max_backoff: the most any computed backoff may be.
        multiplier: growth of the backoff per consecutive failure.
        jitter: full jitter, ``uniform(0, capped exponential)``; off gives the
            exact sequence ``initial, initial*m, initial*m**2, ...`` up to the cap.
        retryable_codes: status codes worth retrying.
        per_attempt_timeout: seconds one attempt may take; ``None`` lets an
            attempt use the whole time left to the deadline.
        retry_stream_removed: also retry ``UNKNOWN`` with the message "Stream
            removed", which some grpcio releases report for a stream reset
            during deployments (grpc/grpc#34076). Off by default: UNKNOWN is
            otherwise "the server failed in a way it did not classify".

    Raises:
        ValueError: from the constructor, for any invalid field.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    jitter: bool = True
    retryable_codes: frozenset[grpc.StatusCode] = DEFAULT_RETRYABLE_CODES
    per_attempt_timeout: float | None = None
    retry_stream_removed: bool = False

    def __post_init__(self) -> None:
        _check(
            isinstance(self.max_attempts, int)
            and not isinstance(self.max_attempts, bool)
            and self.max_attempts >= 1,
            f"max_attempts must be an int >= 1, got {self.max_attempts!r}",
        )
        _check_seconds("initial_backoff", self.initial_backoff)
        _check_seconds("max_backoff", self.max_backoff)
        _check(
            self.max_backoff >= self.initial_backoff,
            f"max_backoff ({self.max_backoff}) must be >= initial_backoff ({self.initial_backoff})",
        )
        _check(
            _is_number(self.multiplier) and math.isfinite(self.multiplier) and self.multiplier >= 1,
            f"multiplier must be a finite number >= 1, got {self.multiplier!r}",
        )
        if self.per_attempt_timeout is not None:
            _check_seconds("per_attempt_timeout", self.per_attempt_timeout)
        self._check_codes()

    def _check_codes(self) -> None:
        codes: Iterable[object] = self.retryable_codes
        _check(
            not isinstance(codes, str | bytes),
            f"retryable_codes must be a collection of grpc.StatusCode, got {codes!r}",
        )
        try:
            codes = frozenset(codes)
        except TypeError:
            raise ValueError(f"retryable_codes must be a collection, got {codes!r}") from None
        for code in codes:
            _check(
                isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK,
                f"retryable_codes must hold non-OK grpc.StatusCode values, got {code!r}",
            )
        # Accept any collection, keep a frozenset: the value stays hashable and immutable.
        object.__setattr__(self, "retryable_codes", codes)

    def with_(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied (validated again); this policy is unchanged."""
        return dataclasses.replace(self, **changes)

    def capped_backoff(self, retry_number: int) -> float:
        """The backoff before retry ``retry_number`` without jitter (its jitter's upper bound)."""
        _check(retry_number >= 1, f"retry_number must be >= 1, got {retry_number}")
        try:
            raw = self.initial_backoff * self.multiplier ** (retry_number - 1)
        except OverflowError:
            return self.max_backoff
        return min(raw, self.max_backoff)

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (1 = before the 2nd attempt).

        Always within ``[0, max_backoff]``.
        """
        cap = self.capped_backoff(retry_number)
        return cap * rng.random() if self.jitter else cap

    def is_retryable_error(self, error: grpc.RpcError) -> bool:
        """Whether the error's status alone makes it worth retrying (idempotency aside).

        A transport failure that grpcio raised on this side (see
        :func:`is_local_transport_failure`) counts as UNAVAILABLE.
        """
        if rpc_code(error) in self.retryable_codes:
            return True
        if grpc.StatusCode.UNAVAILABLE in self.retryable_codes and is_local_transport_failure(
            error
        ):
            return True
        return self.retry_stream_removed and is_stream_removed(error)


def time_left(deadline: float | None, clock: Callable[[], float]) -> float | None:
    """Seconds until ``deadline`` on ``clock`` (negative once it passed); None for no deadline."""
    return None if deadline is None else deadline - clock()


def bounded_timeout(
    per_attempt: float | None, deadline: float | None, clock: Callable[[], float]
) -> tuple[float | None, bool]:
    """An attempt's timeout, the per-attempt one or the time left, the shorter; and which.

    Returns:
        (timeout, whether the per-attempt timeout set it); the timeout is ``<= 0``
        once the deadline has passed, None with neither.
    """
    remaining = time_left(deadline, clock)
    if per_attempt is not None and (remaining is None or per_attempt < remaining):
        return per_attempt, True
    return remaining, False


def is_local_transport_failure(error: grpc.RpcError) -> bool:
    """Whether ``error`` is grpcio's own INTERNAL for a send on a broken connection.

    Seen when a replica dies while a client-streaming call is being written:
    ``INTERNAL: Internal error from Core`` with no trailing metadata, which no
    server sends (ours always answers INTERNAL with its own message and details).
    """
    return (
        rpc_code(error) is grpc.StatusCode.INTERNAL
        and rpc_message(error).strip().lower() == _LOCAL_CORE_FAILURE
        and not rpc_trailing_metadata(error)
    )


def is_stream_removed(error: grpc.RpcError) -> bool:
    """Whether ``error`` is grpcio's ``UNKNOWN: Stream removed`` (grpc/grpc#34076)."""
    return (
        rpc_code(error) is grpc.StatusCode.UNKNOWN
        and rpc_message(error).strip().lower() in _STREAM_REMOVED_MESSAGES
    )


def pushback_delay(error: grpc.RpcError) -> float | None:
    """The server's ``grpc-retry-pushback-ms``, in seconds.

    Returns:
        ``None`` when the server sent none; ``math.inf`` ("never") when the value
        is negative or malformed, which gRFC A6 defines as "do not retry";
        otherwise the delay in seconds. Only the first value counts.
    """
    value = next((v for k, v in rpc_trailing_metadata(error) if k == PUSHBACK_KEY), None)
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not _PUSHBACK_PATTERN.fullmatch(text.strip()):
        return math.inf
    millis = int(text)
    return math.inf if millis < 0 or millis > _INT32_MAX else millis / 1000


# -- Budget ----------------------------------------------------------------------


class RetryBudget:
    """Caps retries across calls so that a sick cluster is not stormed.

    Two buckets, as in Finagle's RetryBudget and in the spirit of gRPC's
    retryThrottling:

    * the ratio bucket: every call deposits ``ratio`` tokens (capped at
      ``max_saved``), so retries stay at about ``ratio`` per call;
    * the floor: ``min_per_second`` tokens per second, at most one second's
      worth saved, so a client making few calls can still retry.

    A retry takes one token, from the floor first (it refills on its own and is
    lost when full), then from the ratio bucket. Not thread-safe: use it from
    one event loop.

    Args:
        ratio: retries allowed per call, in the long run (0.2 = one in five).
        min_per_second: retries per second always allowed.
        clock: monotonic seconds (injectable for tests).
        max_saved: the most tokens the ratio bucket keeps, so a long healthy
            period does not buy an unlimited storm later.

    Raises:
        ValueError: for a negative or non-finite parameter.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_saved: float = 100.0,
    ) -> None:
        _check_seconds("ratio", ratio, allow_zero=True)
        _check_seconds("min_per_second", min_per_second, allow_zero=True)
        _check_seconds("max_saved", max_saved, allow_zero=True)
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.max_saved = max_saved
        self._clock = clock
        self._saved = 0.0
        self._floor = min_per_second  # starts full: a new client may retry at once
        self._refilled_at = clock()

    def on_call(self) -> None:
        """Record one call (not one attempt): deposits ``ratio`` tokens."""
        self._saved = min(self.max_saved, self._saved + self.ratio)

    def try_spend(self) -> bool:
        """Take one token for one retry; ``False`` (and nothing taken) when none is left."""
        if not self.can_spend():
            return False
        if self._floor >= 1 - _EPSILON:  # The floor's tokens go first.
            self._floor = max(0.0, self._floor - 1)
        else:
            self._saved = max(0.0, self._saved - 1)
        return True

    def can_spend(self) -> bool:
        """Whether :meth:`try_spend` would take a token now (nothing is taken)."""
        self._refill_floor()
        return self._floor >= 1 - _EPSILON or self._saved >= 1 - _EPSILON

    @property
    def available(self) -> float:
        """Tokens available now (whole retries are ``floor(available)``)."""
        self._refill_floor()
        return self._floor + self._saved

    def _refill_floor(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        self._floor = min(self.min_per_second, self._floor + elapsed * self.min_per_second)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio}, min_per_second={self.min_per_second}, "
            f"available={self.available:.2f})"
        )


# -- The loop --------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """What one attempt of a call may use; never changed once made.

    Not frozen: one is built per attempt, and a frozen dataclass, which sets
    each field through ``object.__setattr__``, costs three times as much to build.

    Attributes:
        number: 1 for the first attempt, 2 for the first retry, ...
        timeout: seconds this attempt may take: the per-attempt timeout or the
            time left to the deadline, whichever is shorter; ``None`` for no limit.
        excluded: endpoints that failed earlier attempts of this call.
    """

    number: int
    timeout: float | None
    excluded: frozenset[object]


class AttemptFailed(Exception):
    """Raised by an attempt callable: the attempt failed with ``error`` on ``endpoint``.

    The retry loop adds ``endpoint`` to later attempts' ``excluded`` and, when
    it gives up, re-raises ``error`` itself (never this wrapper).
    """

    def __init__(self, error: grpc.RpcError, endpoint: object | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.endpoint = endpoint


@dataclass(slots=True)
class _Loop:
    """The retry decision for one call; ``next_delay`` is the only state change."""

    policy: RetryPolicy
    budget: RetryBudget | None
    deadline: float | None
    idempotent: bool
    clock: Callable[[], float]
    rng: random.Random
    # Consecutive computed backoffs since the call began or since a pushback
    # (gRFC A6: after a pushback the next backoff starts at initial again).
    backoff_step: int = 0

    def attempt_timeout(self) -> tuple[float | None, bool]:
        """(timeout for the next attempt, whether the per-attempt timeout set it).

        The timeout is ``<= 0`` when the deadline has passed.
        """
        return bounded_timeout(self.policy.per_attempt_timeout, self.deadline, self.clock)

    def next_delay(
        self, number: int, error: grpc.RpcError, per_attempt_limited: bool
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        if number >= self.policy.max_attempts or not self.idempotent:
            return None
        if not self._retryable(error, per_attempt_limited):
            return None
        delay = self._delay(error)
        if not math.isfinite(delay) or not self._before_deadline(delay):
            return None
        if self.budget is not None and not self.budget.try_spend():
            return None
        return delay

    def _retryable(self, error: grpc.RpcError, per_attempt_limited: bool) -> bool:
        if self.policy.is_retryable_error(error):
            return True
        # An attempt cut short by its own timeout (not the call's): the call still
        # had time when it started, and next_delay checks that it still has.
        return per_attempt_limited and rpc_code(error) is grpc.StatusCode.DEADLINE_EXCEEDED

    def _delay(self, error: grpc.RpcError) -> float:
        pushback = pushback_delay(error)
        if pushback is not None:
            self.backoff_step = 0
            return pushback
        self.backoff_step += 1
        return self.policy.backoff(self.backoff_step, self.rng)

    def _before_deadline(self, delay: float) -> bool:
        return self.deadline is None or self.clock() + delay < self.deadline


_DEFAULT_RNG = random.Random()


async def call_with_retries(
    attempt: Callable[[Attempt], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    deadline: float | None,
    idempotent: bool,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, grpc.StatusCode, float], None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds or the rules say to give up.

    Args:
        attempt: runs one attempt; raises ``grpc.RpcError`` or
            :class:`AttemptFailed` (to name the endpoint it used) on failure.
        policy: what to retry and how long to wait.
        budget: shared retry budget, or ``None`` for no budget.
        deadline: absolute time on ``clock`` by which the call must end, or ``None``.
        idempotent: whether repeating the call is safe; if not, nothing is retried.
        clock: monotonic seconds.
        sleep: waits the given seconds (a fake clock's sleep in tests).
        rng: random source for jitter.
        on_retry: called as ``(retry_number, code, delay)`` before each retry's
            wait; an exception in it is logged and ignored.

    Returns:
        The first successful attempt's result.

    Raises:
        grpc.RpcError: the last attempt's error, unchanged, when giving up; a
            DEADLINE_EXCEEDED ``grpc.aio.AioRpcError`` if the deadline had
            passed before the first attempt. Any other exception from
            ``attempt`` propagates at once, without retry.
    """
    loop = _Loop(policy, budget, deadline, idempotent, clock, _DEFAULT_RNG if rng is None else rng)
    if budget is not None:
        budget.on_call()
    excluded: frozenset[object] = frozenset()
    last_error: grpc.RpcError | None = None
    number = 1
    while True:
        timeout, per_attempt_limited = loop.attempt_timeout()
        if timeout is not None and timeout <= 0:
            raise last_error if last_error is not None else _deadline_passed()
        try:
            return await attempt(Attempt(number, timeout, excluded))
        except (AttemptFailed, grpc.RpcError) as exc:
            last_error, endpoint = _unwrap(exc)
        if endpoint is not None:
            excluded = excluded | {endpoint}
        delay = loop.next_delay(number, last_error, per_attempt_limited)
        if delay is None:
            raise last_error
        _notify(on_retry, number, rpc_code(last_error), delay)
        await sleep(delay)
        number += 1


def _unwrap(exc: AttemptFailed | grpc.RpcError) -> tuple[grpc.RpcError, object | None]:
    if isinstance(exc, AttemptFailed):
        return exc.error, exc.endpoint
    return exc, None


def _notify(
    on_retry: Callable[[int, grpc.StatusCode, float], None] | None,
    retry_number: int,
    code: grpc.StatusCode,
    delay: float,
) -> None:
    if on_retry is None:
        return
    try:
        on_retry(retry_number, code, delay)
    except Exception:  # observability never breaks the call
        _log.exception("on_retry hook failed; retrying anyway")


def _deadline_passed() -> grpc.RpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "deadline passed before the first attempt",
        None,
    )
