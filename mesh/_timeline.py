"""The data of one run over time, and its picture (a PNG drawn with matplotlib).

The mesh fills a :class:`Timeline` as the run goes: one :class:`Sample` per
interval (calls per second per replica, p99 latency, failed calls) and one
:class:`Mark` per event (a kill, a graceful restart, a scale-up, a replica
ready again). ``save``/``load`` keep it as JSON; ``render_png`` draws three
panels over one time axis with every mark as a vertical line.

matplotlib is imported only inside ``render_png`` (and only its Agg canvas,
never pyplot), so ``import mesh`` stays cheap and no GUI backend is touched.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MARK_COLOURS", "MARK_KINDS", "Mark", "Sample", "Timeline", "replica_colour"]

#: The kinds of event a mark can be, and the colour of its line.
MARK_COLOURS: Mapping[str, str] = {
    "kill": "tab:red",
    "graceful": "tab:orange",
    "restart": "tab:green",
    "scale": "tab:blue",
    "ready": "tab:cyan",
    "other": "tab:gray",
}
MARK_KINDS = tuple(MARK_COLOURS)
_FORMAT_VERSION = 1
# matplotlib's default qualitative palette, by index: replica N gets colour N % 10.
_PALETTE = tuple(f"C{n}" for n in range(10))
_SIZE_IN = (11.0, 7.0)
_DPI = 100


def _check_time(t: float) -> float:
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"a time must be a finite number of seconds >= 0, got {t}")
    return float(t)


@dataclass(frozen=True, slots=True)
class Sample:
    """One interval of a run.

    Attributes:
        t: Seconds since the run started, at the end of the interval.
        rates: Calls per second per replica name over the interval.
        p99_ms: The interval's 99th percentile latency in ms; None without calls.
        failures: Calls that failed in the interval.
    """

    t: float
    rates: Mapping[str, float]
    p99_ms: float | None
    failures: int

    def __post_init__(self) -> None:
        _check_time(self.t)
        if any(not math.isfinite(r) or r < 0 for r in self.rates.values()):
            raise ValueError(f"rates must be finite and >= 0, got {dict(self.rates)}")
        if self.p99_ms is not None and (not math.isfinite(self.p99_ms) or self.p99_ms < 0):
            raise ValueError(f"p99_ms must be finite and >= 0 or None, got {self.p99_ms}")
        if self.failures < 0:
            raise ValueError(f"failures must be >= 0, got {self.failures}")
        object.__setattr__(self, "rates", dict(self.rates))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "t": self.t,
            "rates": dict(self.rates),
            "p99_ms": self.p99_ms,
            "failures": self.failures,
        }


@dataclass(frozen=True, slots=True)
class Mark:
    """One event of a run, drawn as a vertical line.

    Attributes:
        t: Seconds since the run started.
        kind: One of :data:`MARK_KINDS`.
        label: A short text beside the line, e.g. ``"kill users-1"``.
    """

    t: float
    kind: str
    label: str

    def __post_init__(self) -> None:
        _check_time(self.t)
        if self.kind not in MARK_COLOURS:
            raise ValueError(f"a mark's kind is one of {', '.join(MARK_KINDS)}, not {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"t": self.t, "kind": self.kind, "label": self.label}


@dataclass
class Timeline:
    """Samples and marks of one run, in the order they were added.

    Attributes:
        title: The picture's default title.
        samples: Every sample so far.
        marks: Every mark so far.
    """

    title: str = "meshdemo run"
    samples: list[Sample] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)

    def sample(
        self, t: float, rates: Mapping[str, float], p99_ms: float | None, failures: int
    ) -> Sample:
        """Add one interval's numbers (see :class:`Sample`); returns the sample.

        Raises:
            ValueError: A negative or non-finite number.
        """
        return self.add(Sample(t, rates, p99_ms, failures))

    def add(self, sample: Sample) -> Sample:
        """Add a sample made elsewhere (e.g. by the metrics scraper); returns it."""
        self.samples.append(sample)
        return sample

    def mark(self, t: float, kind: str, label: str) -> Mark:
        """Add an event at ``t`` seconds; ``kind`` is one of :data:`MARK_KINDS`.

        Raises:
            ValueError: An unknown kind or a bad time.
        """
        mark = Mark(t, kind, label)
        self.marks.append(mark)
        return mark

    def replicas(self) -> list[str]:
        """Every replica name seen in a sample, in natural order (users-2 before users-10)."""
        names = {name for s in self.samples for name in s.rates}
        return sorted(names, key=_natural_key)

    def to_json(self) -> dict[str, Any]:
        """The timeline as a JSON-ready dict (what ``save`` writes)."""
        return {
            "version": _FORMAT_VERSION,
            "title": self.title,
            "samples": [s.to_json() for s in self.samples],
            "marks": [m.to_json() for m in self.marks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timeline:
        """The timeline ``to_json`` made.

        Raises:
            ValueError: Another format version, or a malformed sample or mark.
        """
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"not a timeline of format {_FORMAT_VERSION}: {data.get('version')!r}")
        try:
            samples = [
                Sample(float(s["t"]), s["rates"], s["p99_ms"], int(s["failures"]))
                for s in data["samples"]
            ]
            marks = [Mark(float(m["t"]), str(m["kind"]), str(m["label"])) for m in data["marks"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed timeline: {exc!r}") from exc
        return cls(str(data.get("title", "")), samples, marks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the timeline as JSON to ``path``; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Timeline:
        """Read a timeline ``save`` wrote.

        Raises:
            OSError: The file cannot be read.
            ValueError: It is not a timeline.
        """
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def render_png(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Draw the timeline as a PNG (11 x 7 in at 100 dpi) at ``path``; returns the path.

        Three panels share the time axis: calls per second per replica, p99
        latency in ms, and failed calls per interval; each mark is a vertical
        line across all three, labelled in the top panel.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        rates, latency, failures = figure.subplots(
            3, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2, 1.4)}
        )
        figure.suptitle(self.title if title is None else title)
        _draw_rates(rates, self)
        _draw_latency(latency, self)
        _draw_failures(failures, self)
        for axes in (rates, latency, failures):
            _draw_marks(axes, self.marks, labelled=axes is rates)
            axes.grid(alpha=0.3)
        failures.set_xlabel("seconds since start")
        failures.set_xlim(0, _x_end(self))
        _legend_of_marks(latency, self.marks)
        target = Path(path)
        figure.savefig(target, format="png")
        return target


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def replica_colour(name: str) -> str:
    """The replica's colour in every picture: by its number (users-N), else by a name hash."""
    digits = re.search(r"(\d+)$", name)
    index = int(digits.group(1)) if digits else zlib.crc32(name.encode())
    return _PALETTE[index % len(_PALETTE)]


def _x_end(timeline: Timeline) -> float:
    """The right end of the time axis: the last sample or mark, a little padded."""
    end = max([s.t for s in timeline.samples] + [m.t for m in timeline.marks], default=0.0)
    return max(end * 1.02, 1.0)


def _draw_rates(axes: Axes, timeline: Timeline) -> None:
    times = [s.t for s in timeline.samples]
    for name in timeline.replicas():
        # A replica absent from a sample did not exist then: a gap, not a 0 (a
        # replica that exists but does not answer is sampled as 0).
        values = [s.rates.get(name, math.nan) for s in timeline.samples]
        axes.plot(times, values, label=name, color=replica_colour(name), linewidth=1.6)
    axes.set_ylabel("calls/s per replica")
    top = max((r for s in timeline.samples for r in s.rates.values()), default=0.0)
    # Headroom above the lines for the marks' labels.
    axes.set_ylim(0, max(top, 1.0) * 1.6)
    if timeline.replicas():
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="replica")
    else:
        _note(axes, "no samples")


def _draw_latency(axes: Axes, timeline: Timeline) -> None:
    times = [s.t for s in timeline.samples]
    # NaN leaves a gap where an interval had no calls.
    values = [math.nan if s.p99_ms is None else s.p99_ms for s in timeline.samples]
    axes.plot(times, values, color="black", linewidth=1.4, marker="." if len(times) < 3 else "")
    axes.set_ylabel("p99 (ms)")
    axes.set_ylim(bottom=0)
    if not any(s.p99_ms is not None for s in timeline.samples):
        _note(axes, "no latency data")


def _draw_failures(axes: Axes, timeline: Timeline) -> None:
    from matplotlib.ticker import MaxNLocator

    times = [s.t for s in timeline.samples]
    counts = [s.failures for s in timeline.samples]
    axes.bar(times, counts, width=_bar_width(times), color="tab:red", align="edge")
    axes.set_ylabel("failed calls")
    total = sum(counts)
    axes.set_ylim(0, max(counts, default=0) * 1.2 + 1)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    # Zero-height bars are invisible: say it in words.
    _note(axes, f"{total} failed" if total else "0 failed", corner=True)


def _bar_width(times: list[float]) -> float:
    """Bars end at their sample's time and span most of the interval before it."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    gap = sorted(gaps)[len(gaps) // 2] if gaps else 1.0
    return -0.8 * gap


def _draw_marks(axes: Axes, marks: list[Mark], *, labelled: bool) -> None:
    for mark in marks:
        colour = MARK_COLOURS[mark.kind]
        axes.axvline(mark.t, color=colour, linestyle="--", linewidth=1.2, alpha=0.9)
        if labelled:
            axes.text(
                mark.t,
                0.98,
                f" {mark.label}",
                transform=axes.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
                color=colour,
            )


def _legend_of_marks(axes: Axes, marks: list[Mark]) -> None:
    from matplotlib.lines import Line2D

    kinds = [k for k in MARK_KINDS if any(m.kind == k for m in marks)]
    if kinds:
        handles = [Line2D([], [], color=MARK_COLOURS[k], linestyle="--", label=k) for k in kinds]
        axes.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="event"
        )


def _note(axes: Axes, text: str, *, corner: bool = False) -> None:
    x, ha = (0.99, "right") if corner else (0.5, "center")
    axes.text(x, 0.8 if corner else 0.5, text, transform=axes.transAxes, ha=ha, va="center")
