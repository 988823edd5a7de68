"""Ours against the baseline in the same process: alternating rounds, medians, one side at a time.

Each measurement opens a fresh client, warms it up (connections made, DNS
resolved) outside the measured window, runs one bounded loop and counts what
each replica served from the replicas' access logs. Rounds alternate the
order (ours first, then baseline first, ...) so neither side always runs on
a warmer or colder machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.client._clients import SIDES, hedge_counts, open_client
from bench.client._cluster import Cluster
from bench.client._loop import Call, LoopResult, closed_loop
from service.testing import reader_token

__all__ = [
    "CONFIDENCE",
    "Bounds",
    "Paired",
    "alternate",
    "measure",
    "median_interval",
    "medians",
    "paired",
    "paired_ratio",
    "paired_ratios",
    "shares",
]

Measure = Callable[[str], Awaitable[dict[str, Any]]]
#: The least confidence of the interval reported beside a paired ratio.
CONFIDENCE = 0.9


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long and how hard one measured loop runs.

    Attributes:
        rounds: Measurements per side (the report shows their median).
        duration: Seconds per measured loop.
        concurrency: Workers of a closed loop.
        max_calls: Most calls a closed loop starts, whatever the duration.
        rate: Calls per second of an open loop.
        warmup_calls: Unmeasured calls before each measurement.
    """

    rounds: int = 3
    duration: float = 5.0
    concurrency: int = 16
    max_calls: int = 200_000
    rate: float = 200.0
    warmup_calls: int = 150

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.duration <= 0 or self.concurrency < 1 or self.max_calls < 1:
            raise ValueError(f"bounds must be positive: {self}")
        if self.rate <= 0 or self.warmup_calls < 0:
            raise ValueError(f"rate must be positive and warmup_calls not negative: {self}")


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    """Each replica's fraction of the calls counted (all 0 when none)."""
    total = sum(counts.values())
    return {host: round(n / total, 4) if total else 0.0 for host, n in sorted(counts.items())}


async def measure(
    cluster: Cluster,
    side: str,
    run: Callable[[Call], Awaitable[LoopResult]],
    *,
    call_timeout: float,
    warmup_calls: int,
    target: str | None = None,
) -> dict[str, Any]:
    """Open ``side``'s client, warm it up, run ``run`` with its GetUser; the figures.

    The client dials ``target``, the cluster's DNS name unless given.

    Figures: the loop's summary, plus ``per_replica`` (GetUser calls each replica
    served during the loop, retries and hedges included), their ``share`` and the
    smallest share (``min_share``: 1/3 when the calls are spread evenly); for our
    client also ``hedges`` and ``hedges_won`` during the loop and ``hedge_share``
    (hedges per call).
    """
    async with open_client(side, target or cluster.target, reader_token()) as get_user:

        async def call() -> object:
            return await get_user(cluster.random_user_id(), call_timeout)

        if warmup_calls:
            await closed_loop(
                call,
                concurrency=8,
                max_calls=warmup_calls,
                duration=5.0,
                call_timeout=call_timeout,
            )
        mark = cluster.mark()
        before = hedge_counts(get_user)
        result = await run(call)
        after = hedge_counts(get_user)
        counts = await cluster.get_user_counts(mark)
    cluster.forget_logs()
    split = shares(counts)
    least = min(split.values(), default=0.0)
    figures = {**result.summary(), "per_replica": counts, "share": split, "min_share": least}
    if before is not None and after is not None:
        hedges = after.hedges - before.hedges
        figures["hedges"] = hedges
        figures["hedges_won"] = after.hedges_won - before.hedges_won
        figures["hedge_share"] = round(hedges / result.calls, 4) if result.calls else 0.0
    return figures


async def alternate(
    rounds: int, measure_side: Measure, sides: Sequence[str] = SIDES
) -> dict[str, list[dict[str, Any]]]:
    """Measure every side ``rounds`` times, reversing their order every other round."""
    figures: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for number in range(rounds):
        order = tuple(sides) if number % 2 == 0 else tuple(reversed(sides))
        for side in order:
            figures[side].append(await measure_side(side))
    return figures


def medians(
    figures: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per side, the median over rounds of each of ``keys``."""
    return {
        side: {key: float(statistics.median(f[key] for f in rounds)) for key in keys}
        for side, rounds in figures.items()
    }


def paired_ratio(
    ours: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], key: str
) -> float:
    """The median over rounds of ``ours[r][key] / baseline[r][key]``: each round's own ratio.

    The two sides of one round ran within seconds of each other, so a slow
    stretch of a shared machine weighs on both; the ratio of the two medians
    pairs a side's median round with the other's, which may have run minutes
    apart. A round whose baseline figure is 0 has no ratio and is left out
    (NaN when every round is).
    """
    return paired(ours, baseline, key).ratio


def paired_ratios(
    ours: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], key: str
) -> list[float]:
    """Each round's own ``ours[r][key] / baseline[r][key]``, rounds whose baseline is 0 left out."""
    return [o[key] / b[key] for o, b in zip(ours, baseline, strict=True) if b[key]]


@dataclass(frozen=True, slots=True)
class Paired:
    """A ratio taken round by round, and how well the rounds pin it down.

    Attributes:
        ratio: The median of the rounds' own ratios (:func:`paired_ratio`).
        low: The interval's lower end (:func:`median_interval`).
        high: Its upper end.
        coverage: The probability that it holds the true median.
    """

    ratio: float
    low: float
    high: float
    coverage: float

    @property
    def interval(self) -> tuple[float, float]:
        """(low, high)."""
        return self.low, self.high

    def figures(self, name: str) -> dict[str, Any]:
        """JSON-ready: ``name``, ``name_interval`` and ``name_interval_coverage``."""
        return {
            name: self.ratio,
            f"{name}_interval": [self.low, self.high],
            f"{name}_interval_coverage": round(self.coverage, 4),
        }


def paired(
    ours: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    key: str,
    confidence: float = CONFIDENCE,
) -> Paired:
    """The paired ratio of ``key`` with its interval at ``confidence``."""
    ratios = paired_ratios(ours, baseline, key)
    middle = float(statistics.median(ratios)) if ratios else math.nan
    return Paired(middle, *median_interval(ratios, confidence))


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """A distribution-free interval for the median of what ``values`` were drawn from.

    The order statistics ``x(k) <= x(n + 1 - k)`` cover the true median with
    probability ``1 - 2 P(B < k)``, B binomial(n, 1/2), whatever the distribution
    (rounds on a shared machine are far from normal: one slow stretch makes an
    outlier). ``k`` is the largest whose coverage is at least ``confidence``;
    with too few values for that, the widest interval (min, max) and its lower
    coverage.

    Returns:
        (low, high, coverage); NaN for all three when ``values`` is empty.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan, math.nan, math.nan
    below = 0.0  # P(B < k), for k = 1, 2, ...: P(B <= k - 1).
    k, coverage = 1, 1.0 - 2 * 0.5**n
    for j in range(n // 2):  # k = j + 1 has coverage 1 - 2 P(B <= j).
        below += math.comb(n, j) * 0.5**n
        if 1 - 2 * below < confidence:
            break
        k, coverage = j + 1, 1 - 2 * below
    return ordered[k - 1], ordered[n - k], coverage
