"""Scenario 2: one replica 10x slower; p99 latency ours vs baseline (goal ours <= 1/5 of it).

The load is an open loop at the steady offered rate (as in scenarios 3 and
4), so latencies are service times rather than the client's own queue. The
healthy median latency at that rate is measured first (baseline client,
three healthy replicas); the first replica is then restarted with
``MESH_FAULT_DELAY`` set to 9 times that, so it answers in about 10 times the
healthy latency. Round robin sends it a third of the calls whatever its
speed. least_conn sends it fewer only as far as calls queue on it (at a
light load nothing queues and it is close to random); peak_ewma compares
latency itself; a hedge sends a second copy elsewhere after the hedge delay.
Sides: our defaults, least_conn named, peak_ewma, our defaults with hedging
off, and the baseline (goal: defaults and least_conn at most 0.2 of the
baseline's p99). One more side gives the floor: the baseline dialling only the
two healthy replicas (a static ``ipv4:`` target), i.e. a client that never sent
the slow one a call and added no cost of its own. When the floor's own ratio is
above 0.2, the healthy replicas' tail on this machine, not the client, decides.

(An earlier version ran a closed loop of 16 workers: there the fast
replicas' own queueing latency was a third of the slow one's, so no policy
could bring the p99 below the healthy p99, about 0.3 of the slow latency.)
"""

from __future__ import annotations

from typing import Any

from bench.client._clients import BASELINE, BASELINE_HEALTHY_ONLY, OURS, OURS_PEAK_EWMA
from bench.client._cluster import HOSTS, Cluster
from bench.client._compare import Bounds, alternate, measure, medians
from bench.client._loop import Call, LoopResult, open_loop
from bench.client._report import ratio, row
from bench.client.throttle import SIDES, hedged_result

__all__ = ["fault_delay", "slow_replica"]

_TIMEOUT = 2.0
_NAME = "2. one replica 10x slower"
#: Bounds of the injected delay, in seconds (a floor for a very fast machine).
_MIN_DELAY = 0.005
_MAX_DELAY = 0.5


def fault_delay(healthy_p50_ms: float) -> float:
    """Seconds of ``MESH_FAULT_DELAY`` that make one replica about 10x slower."""
    return min(max(9 * healthy_p50_ms / 1000.0, _MIN_DELAY), _MAX_DELAY)


async def slow_replica(cluster: Cluster, bounds: Bounds) -> dict[str, Any]:
    """Open loop at ``bounds.rate`` calls/s with one slow replica.

    Returns:
        ``delay_s``, ``healthy_p50_ms``, ``rounds``, ``median`` (p50, p99, hedges,
        the slow replica's share, per side), ``ratio`` (median p99s, ours /
        baseline) and ``ratio_*`` per side, ``met`` and the table ``rows``. The
        replica is healthy again afterwards.
    """
    slow = HOSTS[0]
    healthy_only = "ipv4:" + ",".join(f"{host}:{cluster.port}" for host in HOSTS[1:])

    async def run(call: Call) -> LoopResult:
        return await open_loop(
            call, rate=bounds.rate, duration=bounds.duration, call_timeout=_TIMEOUT
        )

    async def side(name: str) -> dict[str, Any]:
        figures = await measure(
            cluster,
            name,
            run,
            call_timeout=_TIMEOUT,
            warmup_calls=bounds.warmup_calls,
            target=healthy_only if name == BASELINE_HEALTHY_ONLY else None,
        )
        figures["slow_share"] = figures["share"].get(slow, 0.0)
        return figures

    healthy = await measure(
        cluster,
        BASELINE,
        run,
        call_timeout=_TIMEOUT,
        warmup_calls=bounds.warmup_calls,
    )
    delay = fault_delay(healthy["p50_ms"])
    await cluster.restart(slow, env={"MESH_FAULT_DELAY": f"{delay:.4f}"})
    try:
        rounds = await alternate(bounds.rounds, side, (*SIDES, BASELINE_HEALTHY_ONLY))
    finally:
        await cluster.restart(slow)
    return _result(rounds, delay, healthy, bounds)


def _result(
    rounds: dict[str, list[dict[str, Any]]], delay: float, healthy: dict[str, Any], bounds: Bounds
) -> dict[str, Any]:
    floor_rounds = rounds.pop(BASELINE_HEALTHY_ONLY)
    result = hedged_result(_NAME, rounds, bounds)
    floor = medians({BASELINE_HEALTHY_ONLY: floor_rounds}, ["p50_ms", "p99_ms"])[
        BASELINE_HEALTHY_ONLY
    ]
    base = result["median"][BASELINE]["p99_ms"]
    result["rows"].append(
        row(
            _NAME,
            "p99 latency (ms), the floor: round_robin over the two healthy replicas only",
            floor["p99_ms"],
            base,
            goal="",
            met=None,
        )
    )
    result["median"][BASELINE_HEALTHY_ONLY] = floor
    result["rounds"][BASELINE_HEALTHY_ONLY] = floor_rounds
    result["ratio_floor"] = ratio(floor["p99_ms"], base)
    shares = medians(rounds, ["slow_share"])
    result["rows"] += [
        row(
            _NAME,
            f"slow replica's share of calls, {side}",
            shares[side]["slow_share"],
            shares[BASELINE]["slow_share"],
            goal="",
            met=None,
        )
        for side in (OURS, OURS_PEAK_EWMA)
    ]
    for side, figures in shares.items():
        result["median"][side]["slow_share"] = figures["slow_share"]
    result["healthy_p50_ms"] = healthy["p50_ms"]
    result["delay_s"] = round(delay, 4)
    return result
