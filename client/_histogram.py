"""A log-bucket latency histogram with a stated relative error (HDR / DDSketch style).

Recording is O(1) and memory is bounded by the value range, not the number of
samples, so a long load run never grows it. Percentiles use the nearest-rank
definition: the q-quantile of n samples is the sample of rank ``ceil(q * n)``
(at least 1) in sorted order.

Invariant behind the error bound: bucket ``i`` (``i >= 1``) holds the values in
``[floor * g**(i-1), floor * g**i)`` with ``g = (1 + e) / (1 - e)``, and reports
``low * (1 + e)``; every value of the bucket is then within relative error
``e`` of what is reported. Values below ``floor`` go to bucket 0, which reports
the exact minimum. Reports are clamped to the exact ``[min, max]`` seen, which
can only move them closer to the true sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_RELATIVE_ERROR",
    "LatencyHistogram",
    "LatencySummary",
    "exact_percentile",
    "percentile_of_sorted",
]

#: Relative error of every reported percentile, unless told otherwise.
DEFAULT_RELATIVE_ERROR = 0.01
#: Values below this (seconds) are not told apart: one microsecond.
DEFAULT_FLOOR = 1e-6


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency figures of a run, in milliseconds (0 for an empty histogram)."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float]:
        """The figures as a JSON-ready mapping, rounded to microseconds."""
        return {
            "p50": round(self.p50, 3),
            "p95": round(self.p95, 3),
            "p99": round(self.p99, 3),
            "max": round(self.max, 3),
            "mean": round(self.mean, 3),
        }


def exact_percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (``0 < q <= 1``) of ``values``, exactly.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside (0, 1].
    """
    return percentile_of_sorted(sorted(values), q)


def percentile_of_sorted(ordered: Sequence[float], q: float) -> float:
    """:func:`exact_percentile` of values already in ascending order (no sort of its own).

    Raises:
        ValueError: ``ordered`` is empty or ``q`` is outside (0, 1].
    """
    if not ordered:
        raise ValueError("no values")
    return ordered[_rank(q, len(ordered)) - 1]


def _rank(q: float, count: int) -> int:
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    return max(1, math.ceil(q * count))


class LatencyHistogram:
    """Counts of non-negative values (seconds) in logarithmic buckets.

    Args:
        relative_error: Bound on the relative error of every percentile, in (0, 0.5).
        floor: Values below this are kept in one bucket reported as the minimum.

    Raises:
        ValueError: A parameter is out of range.
    """

    __slots__ = ("_buckets", "_count", "_floor", "_gamma_log", "_max", "_min", "_rel", "_sum")

    def __init__(
        self, relative_error: float = DEFAULT_RELATIVE_ERROR, floor: float = DEFAULT_FLOOR
    ) -> None:
        if not 0 < relative_error < 0.5:
            raise ValueError(f"relative_error must be in (0, 0.5), got {relative_error}")
        if not floor > 0:
            raise ValueError(f"floor must be positive, got {floor}")
        self._rel = relative_error
        self._floor = floor
        self._gamma_log = math.log((1 + relative_error) / (1 - relative_error))
        self._buckets: dict[int, int] = {}
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    @property
    def relative_error(self) -> float:
        """The bound on every percentile's relative error."""
        return self._rel

    @property
    def count(self) -> int:
        """Values recorded."""
        return self._count

    @property
    def max(self) -> float:
        """The largest value recorded, exactly (0 when empty)."""
        return self._max

    @property
    def mean(self) -> float:
        """The exact mean (0 when empty)."""
        return self._sum / self._count if self._count else 0.0

    def record(self, value: float) -> None:
        """Count one value (seconds).

        Raises:
            ValueError: ``value`` is negative, infinite or NaN.
        """
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"cannot record {value!r}")
        index = self._index(value)
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self._count += 1
        self._sum += value
        self._min = min(self._min, value)
        self._max = max(self._max, value)

    def _index(self, value: float) -> int:
        if value < self._floor:
            return 0
        return 1 + math.floor(math.log(value / self._floor) / self._gamma_log)

    def _report(self, index: int) -> float:
        if index == 0:
            return self._min
        low = self._floor * math.exp((index - 1) * self._gamma_log)
        return min(max(low * (1 + self._rel), self._min), self._max)

    def percentile(self, q: float) -> float:
        """The nearest-rank ``q``-quantile (``0 < q <= 1``), within the relative error.

        Returns 0 for an empty histogram.

        Raises:
            ValueError: ``q`` is outside (0, 1].
        """
        if not self._count:
            _rank(q, 1)  # still validate q
            return 0.0
        rank = _rank(q, self._count)
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return self._report(index)
        return self._max  # unreachable: the counts add up to _count

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value of ``other`` (same relative error and floor) to this one.

        Raises:
            ValueError: The two histograms bucket differently.
        """
        if (other._rel, other._floor) != (self._rel, self._floor):
            raise ValueError("cannot merge histograms with different buckets")
        for index, count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + count
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def summary_ms(self) -> LatencySummary:
        """p50, p95, p99, max and mean, in milliseconds."""
        return LatencySummary(
            p50=self.percentile(0.50) * 1000,
            p95=self.percentile(0.95) * 1000,
            p99=self.percentile(0.99) * 1000,
            max=self._max * 1000,
            mean=self.mean * 1000,
        )

    def __repr__(self) -> str:
        return (
            f"<LatencyHistogram count={self._count} buckets={len(self._buckets)} "
            f"relative_error={self._rel}>"
        )
