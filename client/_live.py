"""How a load run looks while it runs: a rich live view, or plain progress lines.

Both consume the engine's :class:`~client._load.LoadSnapshot` and nothing else,
so the engine stays free of terminal concerns. :func:`render_snapshot` builds
the renderable (testable by rendering once to a string); :class:`LiveView`
redraws it in place; :class:`PlainProgress` writes one line per interval for
logs and pipes.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client._load import LoadSnapshot

__all__ = ["ENDPOINT_COLUMNS", "LiveView", "PlainProgress", "render_snapshot", "status_line"]

#: Column headers of the endpoint table, in order.
ENDPOINT_COLUMNS = ("Endpoint", "State", "Share %", "In-flight", "Calls", "Failures")

_STATE_STYLES = {
    "SERVING": "green",
    "READY": "green",
    "NOT_SERVING": "yellow",
    "EJECTED": "red",
    "DRAINING": "magenta",
}


def _endpoint_table(snapshot: LoadSnapshot) -> Table:
    table = Table(title="Endpoints", title_justify="left", expand=False)
    for number, header in enumerate(ENDPOINT_COLUMNS):
        table.add_column(header, justify="left" if number < 2 else "right")
    for row in snapshot.endpoints:
        table.add_row(
            row.address,
            Text(row.state, style=_STATE_STYLES.get(row.state, "")),
            f"{row.share * 100:5.1f}",
            str(row.in_flight),
            str(row.calls),
            str(row.failures),
        )
    if not snapshot.endpoints:
        table.add_row("(no endpoint yet)", "", "", "", "", "")
    return table


def _error_table(snapshot: LoadSnapshot) -> Table:
    table = Table(title="Errors by status code", title_justify="left", expand=False)
    table.add_column("Code")
    table.add_column("Count", justify="right")
    for code, count in sorted(snapshot.errors_by_code.items(), key=lambda item: -item[1]):
        table.add_row(Text(code, style="red"), str(count))
    if not snapshot.errors_by_code:
        table.add_row(Text("none", style="green"), "0")
    return table


def _headline(snapshot: LoadSnapshot) -> Text:
    target = f" of {snapshot.target_rps:g}" if snapshot.target_rps > 0 else " (closed loop)"
    return Text.assemble(
        ("Elapsed ", "bold"),
        f"{snapshot.elapsed:6.1f}s   ",
        ("Remaining ", "bold"),
        f"{snapshot.remaining:6.1f}s   ",
        ("Achieved rps ", "bold"),
        f"{snapshot.rps:8.1f}{target}   ",
        ("Overall rps ", "bold"),
        f"{snapshot.rps_overall:8.1f}",
    )


def _counts(snapshot: LoadSnapshot) -> Text:
    return Text.assemble(
        ("Calls ", "bold"),
        f"{snapshot.calls}   ",
        ("OK ", "bold green"),
        f"{snapshot.ok}   ",
        ("Failed ", "bold red"),
        f"{snapshot.failed}   ",
        ("In-flight ", "bold"),
        f"{snapshot.in_flight}   ",
        ("Retries ", "bold"),
        f"{snapshot.retries}   ",
        ("Late ", "bold"),
        f"{snapshot.late}",
    )


def _latency(snapshot: LoadSnapshot) -> Text:
    lat = snapshot.latency_ms
    return Text.assemble(
        ("Latency ms ", "bold"),
        f"p50 {lat.p50:8.2f}   p95 {lat.p95:8.2f}   p99 {lat.p99:8.2f}   ",
        f"max {lat.max:8.2f}   mean {lat.mean:8.2f}",
    )


def render_snapshot(snapshot: LoadSnapshot) -> RenderableType:
    """The live view of one snapshot: headline, counts, latency, endpoints, errors."""
    return Group(
        _headline(snapshot),
        _counts(snapshot),
        _latency(snapshot),
        _endpoint_table(snapshot),
        _error_table(snapshot),
    )


def status_line(snapshot: LoadSnapshot) -> str:
    """One plain line summing up a snapshot (for logs and pipes)."""
    lat = snapshot.latency_ms
    shares = " ".join(f"{row.address}={row.share * 100:.0f}%" for row in snapshot.endpoints)
    return (
        f"t={snapshot.elapsed:.1f}s left={snapshot.remaining:.1f}s calls={snapshot.calls} "
        f"ok={snapshot.ok} failed={snapshot.failed} in_flight={snapshot.in_flight} "
        f"late={snapshot.late} retries={snapshot.retries} rps={snapshot.rps:.1f} "
        f"p50={lat.p50:.2f}ms p95={lat.p95:.2f}ms p99={lat.p99:.2f}ms endpoints: {shares or '-'}"
    )


class LiveView:
    """Redraws the snapshot in place on a terminal. Use as a context manager.

    Args:
        console: Where to draw (a terminal console in normal use).
    """

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, snapshot: LoadSnapshot) -> None:
        """Draw ``snapshot`` now (an ``on_tick`` callback)."""
        self._live.update(render_snapshot(snapshot), refresh=True)


class PlainProgress:
    """Writes :func:`status_line` at most once per ``interval`` seconds of run time.

    Args:
        stream: Where the lines go (stderr, so stdout stays machine-readable).
        interval: Least run time between two lines, in seconds.
    """

    def __init__(self, stream: TextIO, interval: float = 1.0) -> None:
        self._stream = stream
        self._interval = interval
        self._next = interval

    def update(self, snapshot: LoadSnapshot) -> None:
        """Write a line if the interval has passed, or the run is over."""
        if snapshot.elapsed + 1e-9 < self._next and snapshot.remaining > 0:
            return
        self._next = snapshot.elapsed + self._interval
        print(status_line(snapshot), file=self._stream, flush=True)
