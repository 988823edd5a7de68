"""Shared shape of the chaos scenarios: a fixed offered rate, a fault at a fixed time, restore.

Each measurement runs an open loop (``bounds.rate`` calls per second for
``bounds.duration`` seconds) with the fault injected at ``fault_at`` seconds;
afterwards the victim is replaced by a fresh replica and DNS publishes all
three again, so every measurement starts from the same healthy cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.client._cluster import HOSTS, Cluster
from bench.client._compare import Bounds, alternate, measure, medians
from bench.client._loop import Call, LoopResult, open_loop

__all__ = ["VICTIM", "chaos_rounds", "fault_time"]

#: The replica every chaos scenario hurts.
VICTIM = HOSTS[0]

Events = Callable[[], Mapping[float, Callable[[], object]]]


def fault_time(duration: float) -> float:
    """When the fault strikes: a third into the run (2 s of a 6 s run)."""
    return duration / 3.0


async def chaos_rounds(
    cluster: Cluster, bounds: Bounds, events: Events, *, call_timeout: float
) -> dict[str, Any]:
    """Alternating rounds of the open loop with ``events()``; the rounds and their medians."""

    async def run(call: Call) -> LoopResult:
        return await open_loop(
            call,
            rate=bounds.rate,
            duration=bounds.duration,
            call_timeout=call_timeout,
            events=events(),
        )

    async def side(name: str) -> dict[str, Any]:
        try:
            return await measure(
                cluster, name, run, call_timeout=call_timeout, warmup_calls=bounds.warmup_calls
            )
        finally:
            # Always: a stopped replica is resumed and killed before the fresh one starts.
            cluster.replica(VICTIM).resume()
            await cluster.restart(VICTIM)
            cluster.publish(HOSTS)

    rounds = await alternate(bounds.rounds, side)
    return {
        "settings": {
            "rate": bounds.rate,
            "duration_s": bounds.duration,
            "fault_at_s": round(fault_time(bounds.duration), 3),
            "call_timeout_s": call_timeout,
        },
        "rounds": rounds,
        "median": medians(rounds, ["failed", "p50_ms", "p99_ms", "max_ms", "calls"]),
    }
