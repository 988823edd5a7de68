"""What the demo remembers of its run: per-replica traffic per tick, and the mesh's events.

From the load generator's snapshots (client side, what users feel) and the
supervisor's events it derives the timeline samples, each replica's share of
calls between two events, and the failover times: how long after a kill the
replica stopped getting picks, and how long until its restart got traffic.
Every time counts from the start of the load, as the live view's do: the
recorder moves the mesh's time origin there when the first snapshot comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from client import LoadSnapshot, LoadSummary

if TYPE_CHECKING:
    from mesh._demo import DemoPlan
    from mesh._supervisor import Mesh, MeshEvent

__all__ = ["DemoRecorder", "Failover", "Window"]


@dataclass(frozen=True, slots=True)
class _Tick:
    t: float
    calls: Mapping[str, int]  # cumulative calls per replica name since the run started


@dataclass(frozen=True, slots=True)
class Window:
    """The calls each replica served between two events."""

    title: str
    start: float
    end: float
    calls: Mapping[str, int]

    def shares(self) -> dict[str, float]:
        total = sum(self.calls.values())
        return {name: n / total for name, n in sorted(self.calls.items())} if total else {}


@dataclass(frozen=True, slots=True)
class Failover:
    """How one disruption of one replica looked from the client."""

    replica: str
    kind: str
    at: float
    no_picks_after: float | None  # seconds from the event to the first tick without calls
    back_in_dns_after: float | None
    traffic_after: float | None  # seconds from the event to calls reaching it again


class DemoRecorder:
    """Feeds the mesh's timeline from load snapshots and keeps what the summary needs."""

    def __init__(self, mesh: Mesh, plan: DemoPlan) -> None:
        self._mesh = mesh
        self._plan = plan
        self._ticks: list[_Tick] = []
        self._events: list[MeshEvent] = []
        self.started = asyncio.Event()
        mesh.subscribe(self._events.append)

    def label(self, address: str) -> str:
        """The replica name of an endpoint address, for the live view."""
        for replica in self._mesh.replicas:
            if replica.address == address:
                return replica.name
        return address

    def elapsed(self) -> float:
        """Seconds of load so far (0 before the load started)."""
        return max(0.0, self._mesh.now()) if self.started.is_set() else 0.0

    def tick(self, snapshot: LoadSnapshot) -> None:
        """Record one snapshot of the load generator."""
        if not self.started.is_set():
            self._mesh.set_time_origin(snapshot.elapsed)
            self.started.set()
        now = self._mesh.now()
        calls = {self.label(row.address): row.calls for row in snapshot.endpoints}
        rates = {self.label(row.address): row.rate for row in snapshot.endpoints}
        window = snapshot.window_latency_ms
        p99 = window.p99 if window.max > 0 else None  # None: no call finished in the tick
        self._mesh.timeline.sample(now, rates, p99, snapshot.window_failed)
        self._ticks.append(_Tick(now, calls))

    # --- derived -------------------------------------------------------------------------

    def windows(self) -> list[Window]:
        """Calls per replica between consecutive disruptions (kill, graceful, scale)."""
        cuts = [e for e in self._events if e.kind in ("kill", "graceful", "scale")]
        if not self._ticks:
            return []
        bounds = [self._ticks[0].t - 1e9, *(e.t for e in cuts), self._ticks[-1].t + 1e9]
        titles = ["start"] if cuts else ["whole run"]
        titles += ["after " + _title(e) for e in cuts]
        return [
            Window(title, max(lo, 0.0), min(hi, self._ticks[-1].t), self._calls_between(lo, hi))
            for title, lo, hi in zip(titles, bounds, bounds[1:], strict=False)
        ]

    def _calls_between(self, start: float, end: float) -> dict[str, int]:
        inside = [t for t in self._ticks if start <= t.t <= end]
        before = [t for t in self._ticks if t.t < start]
        if not inside:
            return {}
        first = before[-1].calls if before else {}
        last = inside[-1].calls
        return {name: last[name] - first.get(name, 0) for name in last}

    def failovers(self) -> list[Failover]:
        """For every kill and graceful restart: when picks stopped and traffic came back."""
        return [
            self._failover(event)
            for event in self._events
            if event.kind in ("kill", "graceful") and event.replica
        ]

    def _failover(self, event: MeshEvent) -> Failover:
        name = event.replica
        later = [t for t in self._ticks if t.t > event.t]
        stopped = back = None
        previous = self._calls_at(event.t, name)
        for tick in later:
            served = tick.calls.get(name, 0) - previous
            previous = tick.calls.get(name, 0)
            if stopped is None and served == 0:
                stopped = tick.t - event.t
            elif stopped is not None and served > 0:
                back = tick.t - event.t
                break
        ready = next(
            (e.t - event.t for e in self._events if e.t > event.t and e.replica == name
             and e.kind == "ready"),
            None,
        )  # fmt: skip
        return Failover(name, event.kind, event.t, stopped, ready, back)

    def _calls_at(self, t: float, name: str) -> int:
        before = [tick for tick in self._ticks if tick.t <= t]
        return before[-1].calls.get(name, 0) if before else 0

    def render(self, summary: LoadSummary) -> Group:
        """The demo's part of the summary: shares per window, failover times, retries."""
        share = summary.retries / summary.calls * 100 if summary.calls else 0.0
        retries = Text(
            f"retries: {summary.retries} ({share:.2f}% of {summary.calls} calls needed one); "
            f"p50 {summary.latency_ms.p50:.1f} ms, p99 {summary.latency_ms.p99:.1f} ms"
        )
        return Group(self._shares_table(), self._failover_table(), retries)

    def _shares_table(self) -> Table:
        windows = self.windows()
        names = sorted({n for w in windows for n in w.calls}, key=_ordinal)
        table = Table(title="Share of calls per replica", title_justify="left", box=box.SIMPLE)
        table.add_column("from (s)", justify="right")
        table.add_column("window")
        for name in names:
            table.add_column(name, justify="right")
        for window in windows:
            shares = window.shares()
            cells = [f"{shares[n] * 100:.1f}%" if n in shares else "-" for n in names]
            table.add_row(f"{window.start:.1f}", window.title, *cells)
        return table

    def _failover_table(self) -> Table:
        table = Table(title="Failover, seconds after the event", title_justify="left",
                      box=box.SIMPLE)  # fmt: skip
        for header in ("replica", "event", "at (s)", "no picks", "in DNS", "traffic"):
            table.add_column(header, justify="left" if header in ("replica", "event") else "right")
        for f in self.failovers():
            table.add_row(
                f.replica,
                _KINDS[f.kind],
                f"{f.at:.1f}",
                _seconds(f.no_picks_after),
                _seconds(f.back_in_dns_after),
                _seconds(f.traffic_after),
            )
        return table

    def as_dict(self) -> dict[str, Any]:
        """The same facts as JSON-ready values (tests and benchmarks read them)."""
        return {
            "windows": [
                {"title": w.title, "start": w.start, "end": w.end, "calls": dict(w.calls)}
                for w in self.windows()
            ],
            "failovers": [
                {
                    "replica": f.replica,
                    "kind": f.kind,
                    "at": f.at,
                    "no_picks_after": f.no_picks_after,
                    "back_in_dns_after": f.back_in_dns_after,
                    "traffic_after": f.traffic_after,
                }
                for f in self.failovers()
            ],
        }


_KINDS = {"kill": "SIGKILL", "graceful": "graceful"}


def _ordinal(name: str) -> tuple[int, str]:
    number = name.rpartition("-")[2]
    return (int(number), name) if number.isdigit() else (1 << 30, name)


def _title(event: MeshEvent) -> str:
    if event.kind == "scale":
        return f"scale {event.text.split(' replicas')[0]}"
    return f"{_KINDS.get(event.kind, event.kind)} {event.replica}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
