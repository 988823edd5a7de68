"""Scenario 1: GetUser throughput over three healthy replicas, ours / baseline (goal >= 0.9)."""

from __future__ import annotations

from typing import Any

from bench.client._clients import BASELINE, OURS
from bench.client._cluster import Cluster
from bench.client._compare import Bounds, alternate, measure, medians, paired
from bench.client._loop import Call, LoopResult, closed_loop
from bench.client._report import ratio, row

__all__ = ["GOAL", "throughput"]

#: Least acceptable ours / baseline ratio of calls per second.
GOAL = 0.9
_TIMEOUT = 2.0
_NAME = "1. healthy replicas"


async def throughput(cluster: Cluster, bounds: Bounds) -> dict[str, Any]:
    """Closed loop at ``bounds.concurrency``; successful calls per second of each side.

    Returns:
        ``rounds`` (every measurement), ``median`` (rate, p50, p99 per side),
        ``ratio`` (calls/s ours / baseline: the median of the rounds' own ratios, as the
        CPU scenario takes its), ``ratio_of_medians`` (the statistic before 2026-12-07),
        ``met`` and the table ``rows``.
    """

    async def run(call: Call) -> LoopResult:
        return await closed_loop(
            call,
            concurrency=bounds.concurrency,
            max_calls=bounds.max_calls,
            duration=bounds.duration,
            call_timeout=_TIMEOUT,
        )

    async def side(name: str) -> dict[str, Any]:
        return await measure(
            cluster, name, run, call_timeout=_TIMEOUT, warmup_calls=bounds.warmup_calls
        )

    rounds = await alternate(bounds.rounds, side)
    mid = medians(rounds, ["rate", "cpu_us_per_call", "p50_ms", "p99_ms", "failed", "min_share"])
    value = paired(rounds[OURS], rounds[BASELINE], "rate")
    met = value.ratio >= GOAL
    return {
        "settings": {"concurrency": bounds.concurrency, "duration_s": bounds.duration},
        "rounds": rounds,
        "median": mid,
        **value.figures("ratio"),
        "ratio_of_medians": ratio(mid[OURS]["rate"], mid[BASELINE]["rate"]),
        "met": met,
        "rows": [
            row(
                _NAME,
                "GetUser calls/s",
                mid[OURS]["rate"],
                mid[BASELINE]["rate"],
                goal=f"ratio >= {GOAL}",
                met=met,
                paired=value.ratio,
                interval=value.interval,
            ),
            row(
                _NAME,
                "client CPU per call (us)",
                mid[OURS]["cpu_us_per_call"],
                mid[BASELINE]["cpu_us_per_call"],
                goal="",
                met=None,
            ),
            row(
                _NAME,
                "p50 latency (ms)",
                mid[OURS]["p50_ms"],
                mid[BASELINE]["p50_ms"],
                goal="",
                met=None,
            ),
            row(
                _NAME,
                "p99 latency (ms)",
                mid[OURS]["p99_ms"],
                mid[BASELINE]["p99_ms"],
                goal="",
                met=None,
            ),
            row(
                _NAME,
                "smallest replica share",
                mid[OURS]["min_share"],
                mid[BASELINE]["min_share"],
                goal="spread: about 0.33",
                met=None,
                show_ratio=False,
            ),
        ],
    }
