"""Every client scenario on one cluster, in order, with the settings of a full or quick run."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.client._cluster import Cluster
from bench.client._compare import Bounds
from bench.client.cpu import cpu_per_call
from bench.client.instructions import instructions_per_call
from bench.client.kill import DNS_MODES, sigkill
from bench.client.slow_replica import slow_replica
from bench.client.stall import stall
from bench.client.throttle import healthy_hedges, throttled
from bench.client.throughput import throughput

__all__ = ["FULL", "QUICK", "SCENARIOS", "machine", "run_suite"]

#: Scenario names, in the order they run.
SCENARIOS = ("instructions", "throughput", "cpu", "healthy", "slow", "throttle", "kill", "stall")
#: Closed loops of 5 s at 16 workers; open loops of 6 s at 200 calls/s; 3 rounds.
FULL = {
    "closed": Bounds(rounds=3, duration=5.0, concurrency=16),
    "open": Bounds(rounds=3, duration=6.0, rate=200.0, warmup_calls=150),
}
#: A smoke run: one short round of each.
QUICK = {
    "closed": Bounds(rounds=1, duration=1.0, concurrency=8, warmup_calls=30),
    "open": Bounds(rounds=1, duration=1.5, rate=100.0, warmup_calls=30),
}


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


async def run_suite(
    only: Sequence[str] = SCENARIOS, *, quick: bool = False, rounds: int | None = None
) -> dict[str, Any]:
    """Run the named scenarios on one fresh cluster; their results by name.

    Raises:
        ValueError: An unknown scenario name.
    """
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {SCENARIOS}")
    bounds = QUICK if quick else FULL
    closed, chaos = bounds["closed"], bounds["open"]
    if rounds is not None:
        closed = Bounds(**{**_fields(closed), "rounds": rounds})
        chaos = Bounds(**{**_fields(chaos), "rounds": rounds})
    results: dict[str, Any] = {}
    if "instructions" in only:  # Fake channels, no cluster: before the replicas start.
        results["instructions"] = await asyncio.to_thread(
            instructions_per_call, 300 if quick else 2000
        )
    if not set(only) - {"instructions"}:
        return results
    async with Cluster(seed_users=50 if quick else 200) as cluster:
        if "throughput" in only:
            results["throughput"] = await throughput(cluster, closed)
        if "cpu" in only:
            levels = (1, 8) if quick else (1, 32, 128)
            results["cpu"] = await cpu_per_call(cluster, closed, levels)
        if "healthy" in only:
            results["healthy"] = await healthy_hedges(cluster, chaos)
        if "slow" in only:
            results["slow"] = await slow_replica(cluster, chaos)
        if "throttle" in only:
            results["throttle"] = await throttled(cluster, chaos)
        if "kill" in only:
            for mode in DNS_MODES:
                results[f"kill_{mode}"] = await sigkill(cluster, chaos, mode)
        if "stall" in only:
            results["stall"] = await stall(cluster, chaos)
    return results


def _fields(bounds: Bounds) -> dict[str, Any]:
    return {name: getattr(bounds, name) for name in Bounds.__slots__}
