"""``python -m bench.service [--quick] [--rounds N] [--only NAME ...] [--json FILE]``.

Runs the service benchmarks (throughput against a bare echo server, tracing
cost, start-up time, memory) and prints a markdown table, then every figure
as JSON. The exit code is 0 when every goal is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.service._common import Bounds, Row
from bench.service._load import Load
from bench.service._report import machine, markdown_table
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
    rows: list[Row] = []
    for name in names:
        rows += await BENCHMARKS[name](bounds)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny bounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS), help="subset"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser


def _clean(value: Any) -> Any:
    """JSON has no NaN: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the JSON; 0 when every goal is met."""
    args = _parser().parse_args(argv)
    bounds = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            print("error: --rounds must be at least 1", file=sys.stderr)
            return 2
        bounds = dataclasses.replace(bounds, rounds=args.rounds)
    info = machine()
    rows = asyncio.run(run(args.only, bounds))
    document = _clean(
        {"machine": info, "quick": args.quick, "rows": [dataclasses.asdict(r) for r in rows]}
    )
    text = json.dumps(document, indent=2)
    print(markdown_table(rows))
    print()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
