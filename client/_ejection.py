"""Outlier ejection of one endpoint: failures in a row take it out for a growing time.

Invariants:

1. Only outlier failures (UNAVAILABLE, an attempt's own timeout, a connection
   failure) extend the streak; an answer, or an application error, ends it.
2. ``consecutive_failures`` outlier failures in a row eject the endpoint; the
   n-th ejection lasts ``min(base * n, max)`` seconds.
3. Failures while ejected (calls that went anyway) do not lengthen the ejection.
4. Re-admission is lazy: by the clock, when ``is_ejected()`` is next asked.
5. A re-admitted endpoint is on probation until it answers: its first outlier
   failure ejects it again at once (Finagle's and Linkerd's failure accrual
   probe the same way), so a replica that is still dead or slow costs one
   attempt per ejection, not ``consecutive_failures``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from client._validate import check

__all__ = ["OUTLIER_CODES", "EjectionConfig", "OutlierEjection"]

log = logging.getLogger("meshdemo.client.endpoint")

#: Codes that mean "this replica did not answer": they count towards ejection.
OUTLIER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_OK = grpc.StatusCode.OK


@dataclass(frozen=True, slots=True)
class EjectionConfig:
    """Outlier ejection: consecutive failures eject an endpoint for a growing time.

    Attributes:
        consecutive_failures: Failures in a row (UNAVAILABLE, connection failure, attempt
            timeout) that eject the endpoint; once it was ejected, one failure before its
            next answer ejects it again.
        base_ejection_time: Seconds of the first ejection; the n-th lasts n times as long.
        max_ejection_time: Cap on one ejection's length.
    """

    consecutive_failures: int = 3
    base_ejection_time: float = 1.0
    max_ejection_time: float = 30.0

    def __post_init__(self) -> None:
        check(self.consecutive_failures >= 1, "consecutive_failures must be at least 1")
        check(self.base_ejection_time > 0, "base_ejection_time must be positive")
        check(
            self.max_ejection_time >= self.base_ejection_time,
            "max_ejection_time must be >= base_ejection_time",
        )

    def ejection_time(self, times_ejected: int) -> float:
        """Seconds the ``times_ejected``-th ejection lasts (1-based)."""
        return min(self.base_ejection_time * times_ejected, self.max_ejection_time)


class OutlierEjection:
    """The outlier state of one endpoint: its failure streak and ejection deadline.

    Args:
        config: How many failures eject, and for how long.
        clock: Monotonic seconds.
        name: How log lines name the endpoint.
    """

    __slots__ = (
        "_clock",
        "_config",
        "_ejected_until",
        "_name",
        "_probation",
        "_streak",
        "times_ejected",
    )

    def __init__(
        self, config: EjectionConfig, clock: Callable[[], float], *, name: str = ""
    ) -> None:
        self._config = config
        self._clock = clock
        self._name = name
        self._streak = 0
        #: Clock reading when the current ejection ends; None when never ejected.
        self._ejected_until: float | None = None
        #: Ejected since its last answer: one more outlier failure ejects again (invariant 5).
        self._probation = False
        self.times_ejected = 0

    def is_ejected(self) -> bool:
        """Whether an ejection is in force now."""
        until = self._ejected_until
        return until is not None and self._clock() < until

    def record(self, code: grpc.StatusCode | None, *, outlier: bool = True) -> None:
        """One attempt's outcome: ``OK``, a status code, or None for a connection failure.

        Args:
            code: The attempt's status code; None when it never reached the replica.
            outlier: False for a failure that says nothing about the replica
                (an application error, a deadline the caller set): it ends the streak.
        """
        if code is _OK:  # The common case, first: an answer ends the streak.
            self._streak = 0
            self._probation = False
            return
        answered = code is not None and code not in OUTLIER_CODES
        if answered or not outlier:
            self._streak = 0
            self._probation = self._probation and not answered
            return
        if self.is_ejected():
            return  # Already out; calls that went anyway do not lengthen it (invariant 3).
        self._streak += 1
        if self._probation or self._streak >= self._config.consecutive_failures:
            self._eject()

    def _eject(self) -> None:
        self.times_ejected += 1
        self._streak = 0
        self._probation = True
        duration = self._config.ejection_time(self.times_ejected)
        self._ejected_until = self._clock() + duration
        log.info("ejected %s for %.1f s (ejection %d)", self._name, duration, self.times_ejected)

    def __repr__(self) -> str:
        state = "ejected" if self.is_ejected() else "admitted"
        return f"<OutlierEjection {state} streak={self._streak} times={self.times_ejected}>"
