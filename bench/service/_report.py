"""The results table (markdown) and the machine the figures come from."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from bench.service._common import Row

__all__ = ["machine", "markdown_table"]


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
