"""The results table (markdown) and the machine the figures come from."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, TypeVar

from bench._cli import json_safe
from bench.service._common import Row

B = TypeVar("B")

__all__ = ["machine", "markdown_table", "run_benchmarks", "suite_main"]


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _verdict(met: bool | None) -> str:
    return "" if met is None else "met" if met else "MISSED"


def markdown_table(rows: Sequence[Row]) -> str:
    """One line per row: benchmark, figure, median, goal, verdict."""
    lines = [
        "| benchmark | figure | median | goal | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.benchmark} | {row.figure} | {_fmt(row.value)} {row.unit} "
            f"| {row.goal} | {_verdict(row.met)} |"
        )
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict[str, Any]:
    """CPUs, memory, versions and the date of the run."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


async def run_benchmarks(
    benchmarks: Mapping[str, Callable[[B], Awaitable[list[Row]]]], names: Sequence[str], bounds: B
) -> list[Row]:
    """Run the named benchmarks one after the other; all their rows."""
    rows: list[Row] = []
    for name in names:
        rows += await benchmarks[name](bounds)
    return rows


def suite_main(
    args: argparse.Namespace,
    benchmarks: Mapping[str, Callable[[B], Awaitable[list[Row]]]],
    *,
    full: B,
    quick: B,
) -> int:
    """Run the chosen benchmarks, print the table and the JSON; 0 when every goal is met.

    ``args`` come from :func:`bench._cli.suite_parser`; ``full`` and ``quick`` are
    frozen dataclasses with a ``rounds`` field, which ``--rounds`` replaces.
    """
    bounds = quick if args.quick else full
    if args.rounds is not None:
        if args.rounds < 1:
            print("error: --rounds must be at least 1", file=sys.stderr)
            return 2
        bounds = dataclasses.replace(bounds, rounds=args.rounds)  # type: ignore[type-var]
    info = machine()
    rows = asyncio.run(run_benchmarks(benchmarks, args.only, bounds))
    document = json_safe(
        {"machine": info, "quick": args.quick, "rows": [dataclasses.asdict(r) for r in rows]}
    )
    text = json.dumps(document, indent=2)
    print(markdown_table(rows))
    print()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(row.met is not False for row in rows) else 1
