"""Report rows and the markdown table printed by ``python -m bench.client``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.client._compare import CONFIDENCE

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
    interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One table row; ``met`` is None for a figure that has no goal of its own.

    ``paired``: the ratio to show when it was taken round by round
    (:func:`bench.client._compare.paired_ratio`) rather than of the medians shown;
    ``interval``: the (low, high) that the ratio's true median lies in at the
    run's stated confidence (:func:`bench.client._compare.median_interval`).
    """
    shown = ratio(ours, baseline) if paired is None else paired
    return {
        "scenario": scenario,
        "figure": figure,
        "ours": ours,
        "baseline": baseline,
        "ratio": shown if show_ratio else None,
        "interval": list(interval) if interval is not None and show_ratio else None,
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


_INTERVAL_LEGEND = (
    "A ratio with a range in parentheses is the median of the rounds' own ratios; the range "
    f"holds the true median with at least {CONFIDENCE * 100:.0f} % confidence, from the "
    "rounds' order statistics (with too few rounds for that, it runs from the lowest round to "
    "the highest, and the JSON's `*_interval_coverage` gives its lower confidence: 75 % for 3 "
    "rounds, 94 % for 5)."
)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a GitHub markdown table, and a legend when a ratio has an interval."""
    lines = [
        "| Scenario | Figure | Ours | Baseline | Ours / baseline | Goal | Met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        shown = _number(r["ratio"])
        interval = r.get("interval")
        if interval is not None:
            shown += f" ({_number(interval[0])} to {_number(interval[1])})"
        lines.append(
            f"| {r['scenario']} | {r['figure']} | {_number(r['ours'])} | "
            f"{_number(r['baseline'])} | {shown} | {r['goal']} | {_met(r['met'])} |"
        )
    if any(r.get("interval") is not None for r in rows):
        lines += ["", _INTERVAL_LEGEND]
    return "\n".join(lines)
