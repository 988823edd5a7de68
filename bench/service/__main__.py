"""``python -m bench.service [--quick] [--rounds N] [--only NAME ...] [--json FILE]``.

Runs the service benchmarks (throughput against a bare echo server, tracing
cost, start-up time, memory) and prints a markdown table, then every figure
as JSON. The exit code is 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from bench._cli import suite_parser
from bench.service._common import Bounds, Row
from bench.service._load import Load
from bench.service._report import run_benchmarks, suite_main
from bench.service.memory import memory
from bench.service.startup import startup
from bench.service.throughput import throughput
from bench.service.tracing import tracing

__all__ = ["BENCHMARKS", "FULL", "QUICK", "main", "run"]

#: Every benchmark by name, in the order they run.
BENCHMARKS: dict[str, Callable[[Bounds], Awaitable[list[Row]]]] = {
    "throughput": throughput,
    "tracing": tracing,
    "startup": startup,
    "memory": memory,
}
#: The full run: 5 rounds of 4 s at 32 calls in flight, 7 starts, 1,000 streams.
FULL = Bounds(rounds=5, load=Load(concurrency=32, duration=4.0, warmup=1.0), starts=7)
#: A smoke run: tiny bounds, figures only roughly meaningful.
QUICK = Bounds(
    rounds=1,
    load=Load(concurrency=4, duration=0.5, warmup=0.2, max_calls=2_000),
    starts=1,
    streams=20,
    settle=0.2,
)


async def run(names: Sequence[str], bounds: Bounds) -> list[Row]:
    """Run the named benchmarks one after the other; all their rows."""
    return await run_benchmarks(BENCHMARKS, names, bounds)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the JSON; 0 when every goal is met."""
    args = suite_parser("python -m bench.service", __doc__, list(BENCHMARKS)).parse_args(argv)
    return suite_main(args, BENCHMARKS, full=FULL, quick=QUICK)


if __name__ == "__main__":
    sys.exit(main())
