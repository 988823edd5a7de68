"""Scenario 5: one replica throttled (paused 80 ms of every 100 ms); p99 ours vs baseline.

This is the shape of a pod at its CPU limit: the kernel's CFS quota lets it
run for the first 20 ms of every 100 ms period and stops it for the rest. The
pauses are real: a thread sends SIGSTOP and SIGCONT to the replica's process
on that schedule for the whole measurement (warm-up included), so its TCP
connections stay open and its health stays SERVING. Round robin sends it a
third of the calls, four in five of which wait for the rest of the pause
(up to 80 ms). Counting in-flight calls sees nothing at a light load; a hedge
sends a second copy to another replica after the method's hedge delay.

Also scenario 0: hedges as a share of calls with every replica healthy (the
price of hedging when nothing is wrong), same open loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.client._clients import BASELINE, OURS, OURS_LEAST_CONN, OURS_NO_HEDGING, OURS_PEAK_EWMA
from bench.client._cluster import HOSTS, Cluster
from bench.client._compare import Bounds, alternate, measure, medians
from bench.client._loop import Call, LoopResult, open_loop
from bench.client._report import ratio, row
from service.testing import ReplicaProcess

__all__ = ["GOAL", "HEALTHY_HEDGE_GOAL", "PERIOD", "STOPPED", "healthy_hedges", "throttled"]

#: Greatest acceptable ours / baseline ratio of p99 latencies (moonshot 0.1).
GOAL = 0.2
#: Most hedges per call with healthy replicas.
HEALTHY_HEDGE_GOAL = 0.02
#: The throttling period and the part of it the replica is stopped (seconds).
PERIOD = 0.100
STOPPED = 0.080
_TIMEOUT = 2.0
_NAME = "5. one replica paused 80 of every 100 ms"
_HEALTHY = "0. healthy replicas"
#: Sides of the throttled comparison: defaults, least_conn named, peak_ewma, no hedging.
SIDES = (OURS, OURS_LEAST_CONN, OURS_PEAK_EWMA, OURS_NO_HEDGING, BASELINE)
_KEYS = ["p50_ms", "p99_ms", "failed", "rate", "hedges", "hedges_won", "hedge_share", "calls"]


@contextmanager
def throttling(replica: ReplicaProcess) -> Iterator[None]:
    """Stop ``replica`` for :data:`STOPPED` of every :data:`PERIOD` while the block runs.

    A thread keeps the schedule (the event loop's timing is the thing measured);
    the replica is always left running.
    """
    done = threading.Event()

    def cycle() -> None:
        while not done.is_set():
            replica.pause()
            stopped = done.wait(STOPPED)
            replica.resume()
            if stopped:
                return
            done.wait(PERIOD - STOPPED)

    thread = threading.Thread(target=cycle, name="throttle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)
        replica.resume()


def _open_loop(bounds: Bounds) -> Any:
    async def run(call: Call) -> LoopResult:
        return await open_loop(
            call, rate=bounds.rate, duration=bounds.duration, call_timeout=_TIMEOUT
        )

    return run


async def throttled(cluster: Cluster, bounds: Bounds) -> dict[str, Any]:
    """Open loop at ``bounds.rate`` calls/s with the first replica throttled.

    Returns:
        ``rounds``, ``median`` per side (p50, p99, hedges, ...), the ratios of
        median p99s to the baseline's (``ratio`` for the defaults,
        ``ratio_least_conn``, ``ratio_peak_ewma``, ``ratio_no_hedging``),
        ``met`` (defaults and least_conn within :data:`GOAL`) and the table ``rows``.
    """
    victim = cluster.replica(HOSTS[0])
    run = _open_loop(bounds)

    async def side(name: str) -> dict[str, Any]:
        with throttling(victim):
            return await measure(
                cluster, name, run, call_timeout=_TIMEOUT, warmup_calls=bounds.warmup_calls
            )

    rounds = await alternate(bounds.rounds, side, SIDES)
    return hedged_result(_NAME, rounds, bounds)


def hedged_result(
    name: str, rounds: dict[str, list[dict[str, Any]]], bounds: Bounds
) -> dict[str, Any]:
    """Medians, ratios against the baseline, the goal and the rows of a hedged scenario."""
    mid = medians({s: r for s, r in rounds.items() if s != BASELINE}, _KEYS)
    mid[BASELINE] = medians({BASELINE: rounds[BASELINE]}, ["p50_ms", "p99_ms", "failed", "rate"])[
        BASELINE
    ]
    base = mid[BASELINE]["p99_ms"]
    ratios = {s: ratio(mid[s]["p99_ms"], base) for s in mid if s != BASELINE}
    met = ratios[OURS] <= GOAL and ratios[OURS_LEAST_CONN] <= GOAL
    labels = {
        OURS: "defaults",
        OURS_LEAST_CONN: "least_conn",
        OURS_PEAK_EWMA: "peak_ewma",
        OURS_NO_HEDGING: "defaults, hedging off",
    }
    rows = [
        row(
            name,
            f"p99 latency (ms), {labels[s]}",
            mid[s]["p99_ms"],
            base,
            goal=f"ratio <= {GOAL}" if s in (OURS, OURS_LEAST_CONN) else "",
            met=ratios[s] <= GOAL if s in (OURS, OURS_LEAST_CONN) else None,
        )
        for s in labels
        if s in mid
    ]
    rows += [
        row(
            name,
            f"hedges per call, {labels[s]}",
            mid[s]["hedge_share"],
            0.0,
            goal="(reported)",
            met=None,
            show_ratio=False,
        )
        for s in (OURS, OURS_LEAST_CONN, OURS_PEAK_EWMA)
        if s in mid
    ]
    rows.append(
        row(
            name,
            "failed calls, defaults",
            mid[OURS]["failed"],
            mid[BASELINE]["failed"],
            goal="",
            met=None,
            show_ratio=False,
        )
    )
    return {
        "settings": {"rate": bounds.rate, "duration_s": bounds.duration},
        "rounds": rounds,
        "median": mid,
        "ratio": ratios[OURS],
        "ratio_least_conn": ratios[OURS_LEAST_CONN],
        "ratio_peak_ewma": ratios.get(OURS_PEAK_EWMA),
        "ratio_no_hedging": ratios.get(OURS_NO_HEDGING),
        "met": met,
        "rows": rows,
    }


async def healthy_hedges(cluster: Cluster, bounds: Bounds) -> dict[str, Any]:
    """Hedges per call with three healthy replicas (goal <= :data:`HEALTHY_HEDGE_GOAL`)."""
    run = _open_loop(bounds)

    async def side(name: str) -> dict[str, Any]:
        return await measure(
            cluster, name, run, call_timeout=_TIMEOUT, warmup_calls=bounds.warmup_calls
        )

    rounds = await alternate(bounds.rounds, side, (OURS, OURS_LEAST_CONN, BASELINE))
    mid = medians({s: r for s, r in rounds.items() if s != BASELINE}, _KEYS)
    base = medians({BASELINE: rounds[BASELINE]}, ["p50_ms", "p99_ms"])[BASELINE]
    share = mid[OURS]["hedge_share"]
    met = share <= HEALTHY_HEDGE_GOAL and mid[OURS_LEAST_CONN]["hedge_share"] <= HEALTHY_HEDGE_GOAL
    return {
        "settings": {"rate": bounds.rate, "duration_s": bounds.duration},
        "rounds": rounds,
        "median": {**mid, BASELINE: base},
        "met": met,
        "rows": [
            row(
                _HEALTHY,
                "hedges per call, defaults",
                share,
                0.0,
                goal=f"<= {HEALTHY_HEDGE_GOAL}",
                met=share <= HEALTHY_HEDGE_GOAL,
                show_ratio=False,
            ),
            row(
                _HEALTHY,
                "hedges per call, least_conn",
                mid[OURS_LEAST_CONN]["hedge_share"],
                0.0,
                goal=f"<= {HEALTHY_HEDGE_GOAL}",
                met=mid[OURS_LEAST_CONN]["hedge_share"] <= HEALTHY_HEDGE_GOAL,
                show_ratio=False,
            ),
            row(
                _HEALTHY,
                "p99 latency (ms), defaults",
                mid[OURS]["p99_ms"],
                base["p99_ms"],
                goal="",
                met=None,
            ),
        ],
    }
