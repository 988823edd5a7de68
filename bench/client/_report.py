"""Report rows and the markdown table printed by ``python -m bench.client``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["markdown_table", "ratio", "row"]


def ratio(ours: float, baseline: float) -> float:
    """``ours / baseline``; NaN when the baseline is 0 (no ratio to speak of)."""
    return ours / baseline if baseline else math.nan


def row(
    scenario: str,
    figure: str,
    ours: float,
    baseline: float,
    *,
    goal: str,
    met: bool | None,
    show_ratio: bool = True,
    paired: float | None = None,
) -> dict[str, Any]:
    """One table row; ``met`` is None for a figure that has no goal of its own.

    ``paired``: the ratio to show when it was taken round by round
    (:func:`bench.client._compare.paired_ratio`) rather than of the medians shown.
    """
    shown = ratio(ours, baseline) if paired is None else paired
    return {
        "scenario": scenario,
        "figure": figure,
        "ours": ours,
        "baseline": baseline,
        "ratio": shown if show_ratio else None,
        "goal": goal,
        "met": met,
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _met(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def markdown_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as a GitHub markdown table."""
    lines = [
        "| Scenario | Figure | Ours | Baseline | Ours / baseline | Goal | Met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['figure']} | {_number(r['ours'])} | "
            f"{_number(r['baseline'])} | {_number(r['ratio'])} | {r['goal']} | {_met(r['met'])} |"
        )
    return "\n".join(lines)
