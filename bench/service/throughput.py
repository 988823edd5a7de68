"""Benchmark 1: GetUser calls/s of a production replica against a bare echo server.

The replica is ``python -m service`` with every interceptor on: auth with a
real token, Prometheus metrics, tracing as in production (default sampler,
``parentbased_always_on``, no exporter endpoint), JSON access logs to a pipe
that is drained, and the SQLite store. The echo server
(:mod:`bench.service._echo`) answers GetUser with a fixed user and nothing
else. Both are subprocesses on loopback under the same closed-loop load from
this process. Goal: replica/echo >= 0.5.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.service._common import Bounds, Row, median, seed_user
from bench.service._compare import Target, compare_rates
from bench.service._procs import Spawned, replica_argv, replica_env

__all__ = ["GOAL", "throughput"]

#: Minimum replica/echo ratio of calls per second.
GOAL = 0.5


async def throughput(bounds: Bounds) -> list[Row]:
    """Run the comparison; the ratio row and both rates."""
    with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
        store = f"sqlite:///{Path(tmp) / 'users.db'}"
        echo = Spawned([sys.executable, "-m", "bench.service._echo"], replica_env())
        replica = Spawned(replica_argv("127.0.0.1", store), replica_env())
        async with echo, replica:
            user_id = await seed_user(replica.address)
            targets = {
                "echo": Target(echo.address, user_id),
                "replica": Target(replica.address, user_id),
            }
            results = await compare_rates(targets, bounds.load, bounds.rounds)
    echo_rates = [r.rate for r in results["echo"]]
    replica_rates = [r.rate for r in results["replica"]]
    ratios = [mine / bare for mine, bare in zip(replica_rates, echo_rates, strict=True)]
    ratio = median(ratios)
    errors = sum(r.errors for side in results.values() for r in side)
    return [
        Row(
            "throughput",
            "replica / echo GetUser calls/s",
            ratio,
            "x",
            f">= {GOAL}",
            ratio >= GOAL,
            {"ratios": ratios, "errors": errors, "concurrency": bounds.load.concurrency},
        ),
        Row(
            "throughput",
            "echo server GetUser",
            median(echo_rates),
            "calls/s",
            detail={"rates": echo_rates},
        ),
        Row(
            "throughput",
            "replica GetUser (all interceptors, SQLite)",
            median(replica_rates),
            "calls/s",
            detail={"rates": replica_rates},
        ),
    ]
