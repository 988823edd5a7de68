"""How a load run looks while it runs, and its summary: a rich live view, or plain lines.

Both consume the engine's :class:`~client._load.LoadSnapshot` and nothing else,
so the engine stays free of terminal concerns. :func:`render_snapshot` builds
the renderable (testable by rendering once to a string); :class:`LiveView`
redraws it in place; :class:`PlainProgress` writes lines for logs and pipes.
Both report each change of an endpoint (:func:`~client._events.endpoint_events`)
as an event line, ``  12.3s  127.0.0.3:50051  lost (UNREACHABLE)``.

Width: everything the live view and the summary draw fits 80 columns. Cells
are cut (never wrapped): an endpoint's name first, then its address in the
middle, so the port stays readable. Endpoints can be shown with a name beside
the address through ``label`` (a mapping or a callable from address to name,
e.g. ``{"127.0.0.3:50051": "users-1"}``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client._events import EndpointEvent, endpoint_events
from client._histogram import LatencySummary
from client._load import EndpointRow, LoadSnapshot, LoadSummary

__all__ = [
    "ENDPOINT_COLUMNS",
    "ENDPOINT_WIDTH",
    "Label",
    "LiveView",
    "PlainProgress",
    "endpoint_line",
    "endpoint_text",
    "format_event",
    "render_snapshot",
    "render_summary",
    "status_line",
]

#: A name for an address: a mapping, or a callable returning the name (or None).
Label = Mapping[str, str] | Callable[[str], str | None] | None

#: Column headers of the live endpoint table, in order.
#: ``Fail`` counts failed attempts; ``Out`` hedge copies a later copy outran (slow
#: answers, not failures, though they count towards ejection); ``Ej`` ejections.
ENDPOINT_COLUMNS = (
    "Endpoint", "State", "Rate/s", "Share%", "In-fl", "Calls", "Fail", "Out", "Ej",
)  # fmt: skip
#: Most characters an endpoint's name and address take in a table or an event line.
ENDPOINT_WIDTH = 26
#: Event lines the live view keeps on screen.
DEFAULT_EVENT_LINES = 8

_STATE_STYLES = {
    "SERVING": "green",
    "READY": "green",
    "CONNECTING": "dim",
    "UNREACHABLE": "bold red",
    "NOT_SERVING": "yellow",
    "EJECTED": "red",
    "DRAINING": "magenta",
    "REMOVED": "dim",
}
_EVENT_STYLES = {
    "lost": "bold red",
    "ejected": "red",
    "re-admitted": "green",
    "draining": "magenta",
    "added": "cyan",
    "removed": "dim",
}
#: Events whose line names the state reached (the others' kind says it all).
_SHOW_STATE = frozenset({"lost", "re-admitted", "added"})
_ELLIPSIS = "…"


# --- names and event lines --------------------------------------------------------------------


def _name_of(address: str, label: Label) -> str:
    if label is None:
        return ""
    name = label.get(address) if isinstance(label, Mapping) else label(address)
    return "" if not name or name == address else name


def _cut_middle(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + _ELLIPSIS + text[len(text) - (width - 1 - head) :]


def endpoint_text(address: str, label: Label = None, width: int = ENDPOINT_WIDTH) -> str:
    """``name address`` (or the bare address) in at most ``width`` characters.

    The name is cut first (``users-12345…``); an address longer than ``width``
    on its own loses its middle (``[fd00:…:1]:50051``), keeping the port.
    """
    shown = _cut_middle(address, width)
    name = _name_of(address, label)
    room = width - len(shown) - 1
    if not name or room < 2:
        return shown
    if len(name) > room:
        name = name[: room - 1] + _ELLIPSIS
    return f"{name} {shown}"


def format_event(event: EndpointEvent, label: Label = None) -> str:
    """The event as one line: ``  12.3s  127.0.0.3:50051  lost (UNREACHABLE)``."""
    what: str = event.kind
    if event.kind in _SHOW_STATE and event.new_state:
        what = f"{event.kind} ({event.new_state})"
    return f"{event.time:7.1f}s  {endpoint_text(event.address, label)}  {what}"


def _event_text(event: EndpointEvent, label: Label) -> Text:
    text = Text(format_event(event, label), no_wrap=True, overflow="ellipsis")
    text.highlight_words([event.kind], style=_EVENT_STYLES.get(event.kind, ""))
    return text


# --- the live view ----------------------------------------------------------------------------


def _line(*parts: str | tuple[str, str]) -> Text:
    text = Text.assemble(*parts)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _rate(value: float) -> str:
    # No tenths from 1000/s on: the table keeps to 80 columns (as ``_ms`` does for ms).
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _endpoint_table(snapshot: LoadSnapshot, label: Label) -> Table:
    table = Table(
        title="Endpoints",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
        show_edge=False,
    )
    for number, header in enumerate(ENDPOINT_COLUMNS):
        table.add_column(
            header, justify="left" if number < 2 else "right", no_wrap=True, overflow="ellipsis"
        )
    for row in snapshot.endpoints:
        table.add_row(
            Text(endpoint_text(row.address, label)),  # Text: an address is never markup
            Text(row.state, style=_STATE_STYLES.get(row.state, "")),
            Text(_rate(row.rate)),
            Text(f"{row.share * 100:.1f}"),
            Text(str(row.in_flight)),
            Text(str(row.calls)),
            Text(str(row.failures), style="red" if row.failures else ""),
            Text(str(row.outruns), style="yellow" if row.outruns else ""),
            Text(str(row.ejections)),
        )
    if not snapshot.endpoints:
        table.add_row("(no endpoint yet)", *[""] * (len(ENDPOINT_COLUMNS) - 1))
    return table


def _headline(snapshot: LoadSnapshot) -> Text:
    target = f" of {snapshot.target_rps:g}" if snapshot.target_rps > 0 else " (closed loop)"
    return _line(
        ("Elapsed ", "bold"),
        f"{snapshot.elapsed:.1f}s  ",
        ("Remaining ", "bold"),
        f"{snapshot.remaining:.1f}s  ",
        ("Achieved rps ", "bold"),
        f"{snapshot.rps:.1f}{target}  ",
        ("Overall ", "bold"),
        f"{snapshot.rps_overall:.1f}",
    )


def _counts(snapshot: LoadSnapshot) -> Text:
    return _line(
        ("Calls ", "bold"),
        f"{snapshot.calls}  ",
        ("OK ", "bold green"),
        f"{snapshot.ok}  ",
        ("Failed ", "bold red"),
        f"{snapshot.failed}  ",
        ("Retries ", "bold"),
        f"{snapshot.retries}  ",
        ("Hedges ", "bold"),
        f"{snapshot.hedges} (won {snapshot.hedges_won})  ",
        ("Late ", "bold"),
        f"{snapshot.late}  ",
        ("In-flight ", "bold"),
        f"{snapshot.in_flight}",
    )


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _latency(snapshot: LoadSnapshot) -> Sequence[Text]:
    lat, win = snapshot.latency_ms, snapshot.window_latency_ms
    failed_style = "bold red" if snapshot.window_failed else ""
    return (
        _line(
            ("Latency ms  ", "bold"),
            f"p50 {_ms(lat.p50)}  p95 {_ms(lat.p95)}  p99 {_ms(lat.p99)}  max {_ms(lat.max)}",
            (" (all)", "dim"),
        ),
        _line(
            ("Last tick   ", "bold"),
            f"p50 {_ms(win.p50)}  p99 {_ms(win.p99)}  ",
            ("failed ", "bold"),
            (f"{snapshot.window_failed}", failed_style),
            ("  retries ", "bold"),
            f"{snapshot.window_retries}",
            ("  hedges ", "bold"),
            f"{snapshot.window_hedges}",
        ),
    )


def _errors(snapshot: LoadSnapshot) -> Text:
    if not snapshot.errors_by_code:
        return _line(("Errors ", "bold"), ("none", "green"))
    ranked = sorted(snapshot.errors_by_code.items(), key=lambda item: (-item[1], item[0]))
    parts: list[str | tuple[str, str]] = [("Errors ", "bold")]
    for code, count in ranked:
        parts += [(code, "red"), f" {count}  "]
    return _line(*parts)


def _event_log(lines: Sequence[Text]) -> RenderableType:
    title = Text("Events", style="bold")
    return Group(title, *lines) if lines else Group(title, Text("  (none yet)", style="dim"))


def render_snapshot(
    snapshot: LoadSnapshot, label: Label = None, events: Sequence[Text] = ()
) -> RenderableType:
    """The live view of one snapshot: figures, endpoints, errors, and the event lines."""
    return Group(
        _headline(snapshot),
        _counts(snapshot),
        *_latency(snapshot),
        _errors(snapshot),
        _endpoint_table(snapshot, label),
        _event_log(events),
    )


class LiveView:
    """Redraws the snapshot in place on a terminal, with the latest events. A context manager.

    Args:
        console: Where to draw (a terminal console in normal use).
        label: Names shown beside addresses (see the module docstring).
        event_lines: Event lines kept on screen (the newest).
    """

    def __init__(
        self, console: Console, label: Label = None, event_lines: int = DEFAULT_EVENT_LINES
    ) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)
        self._label = label
        self._lines: deque[Text] = deque(maxlen=event_lines)
        self._previous: LoadSnapshot | None = None
        #: Every event seen so far, oldest first.
        self.events: list[EndpointEvent] = []

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, snapshot: LoadSnapshot) -> None:
        """Draw ``snapshot`` now, with the events since the previous one (an ``on_tick``)."""
        for event in endpoint_events(self._previous, snapshot):
            self.events.append(event)
            self._lines.append(_event_text(event, self._label))
        self._previous = snapshot
        self._live.update(self.renderable(), refresh=True)

    def renderable(self) -> RenderableType:
        """What the view shows now: the latest snapshot and event lines."""
        if self._previous is None:
            return Text("waiting for the first snapshot", style="dim")
        return render_snapshot(self._previous, self._label, list(self._lines))


# --- plain lines ------------------------------------------------------------------------------


def status_line(
    snapshot: LoadSnapshot, since: LoadSnapshot | None = None, recent_p99: float | None = None
) -> str:
    """One plain line summing up a snapshot (for logs and pipes).

    Args:
        snapshot: The run now.
        since: The snapshot of the previous line: ``rps`` and the ``(+n)`` new
            failures and retries then cover the time since it (else the last tick).
        recent_p99: The p99 to show as recent (default: the last tick's).
    """
    lat = snapshot.latency_ms
    rps, failed, retries = snapshot.rps, snapshot.window_failed, snapshot.window_retries
    if since is not None and snapshot.elapsed > since.elapsed:
        rps = (snapshot.calls - since.calls) / (snapshot.elapsed - since.elapsed)
        failed, retries = snapshot.failed - since.failed, snapshot.retries - since.retries
    recent = snapshot.window_latency_ms.p99 if recent_p99 is None else recent_p99
    return (
        f"t={snapshot.elapsed:.1f}s left={snapshot.remaining:.1f}s calls={snapshot.calls} "
        f"failed={snapshot.failed} (+{failed}) retries={snapshot.retries} (+{retries}) "
        f"late={snapshot.late} rps={rps:.1f} p50={lat.p50:.2f}ms p99={lat.p99:.2f}ms "
        f"recent_p99={recent:.2f}ms hedges={snapshot.hedges} won={snapshot.hedges_won}"
    )


def endpoint_line(row: EndpointRow, label: Label = None, rate: float | None = None) -> str:
    """One plain line for one endpoint: state, rate (default: the last tick's), share, counts.

    ``outrun`` counts its hedge copies that a later copy beat: slow answers, not failures.
    """
    return (
        f"  {endpoint_text(row.address, label)} {row.state} "
        f"rate={row.rate if rate is None else rate:.1f}/s share={row.share * 100:.1f}% "
        f"calls={row.calls} failed={row.failures} ejected={row.ejections} outrun={row.outruns}"
    )


class PlainProgress:
    """Plain lines for logs and pipes: events as they happen, figures once per interval.

    Every event line is written at the snapshot that saw it. At most once per
    ``interval`` seconds of run time (and at the end) come a :func:`status_line`
    and one :func:`endpoint_line` per endpoint. Their rates, new failures and
    retries cover the time since the previous such line; ``recent_p99`` is the
    worst p99 of the ticks in between.

    Args:
        stream: Where the lines go (stderr, so stdout stays machine-readable).
        interval: Least run time between two sets of figures, in seconds.
        label: Names shown beside addresses (see the module docstring).
    """

    def __init__(self, stream: TextIO, interval: float = 1.0, label: Label = None) -> None:
        self._stream = stream
        self._interval = interval
        self._next = interval
        self._label = label
        self._previous: LoadSnapshot | None = None
        self._printed: LoadSnapshot | None = None
        self._worst_p99 = 0.0
        #: Every event seen so far, oldest first.
        self.events: list[EndpointEvent] = []

    def update(self, snapshot: LoadSnapshot) -> None:
        """Write the new events, and the figures if the interval has passed or the run is over."""
        lines = []
        for event in endpoint_events(self._previous, snapshot):
            self.events.append(event)
            lines.append(format_event(event, self._label))
        self._previous = snapshot
        self._worst_p99 = max(self._worst_p99, snapshot.window_latency_ms.p99)
        if snapshot.elapsed + 1e-9 >= self._next or snapshot.remaining <= 0:
            self._next = snapshot.elapsed + self._interval
            lines += self._figures(snapshot)
        if lines:
            print("\n".join(lines), file=self._stream, flush=True)

    def _figures(self, snapshot: LoadSnapshot) -> list[str]:
        since, self._printed = self._printed, snapshot
        worst, self._worst_p99 = self._worst_p99, 0.0
        lines = [status_line(snapshot, since, worst)]
        before = {row.address: row.calls for row in since.endpoints} if since else {}
        span = snapshot.elapsed - since.elapsed if since else 0.0
        for row in snapshot.endpoints:
            rate = (row.calls - before[row.address]) / span if row.address in before else None
            lines.append(endpoint_line(row, self._label, rate if span > 0 else None))
        return lines


# --- the summary ------------------------------------------------------------------------------


def _table(title: str, headers: Sequence[str], *, last_left: bool = False) -> Table:
    """A summary table: text columns (the first, the last if ``last_left``) on the left."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
        show_edge=False,
    )
    for number, header in enumerate(headers):
        table.add_column(
            header,
            justify="left"
            if number == 0 or (last_left and number == len(headers) - 1)
            else "right",
            no_wrap=True,
            overflow="ellipsis",
        )
    return table


def _latency_cells(lat: LatencySummary) -> list[str]:
    return [_ms(lat.p50), _ms(lat.p95), _ms(lat.p99), _ms(lat.max)]


def _operations_table(summary: LoadSummary) -> Table:
    headers = ("Op", "Calls", "OK", "Failed", "p50 ms", "p95 ms", "p99 ms", "max ms")
    table = _table("Per operation", headers)
    for name, row in summary.per_operation.items():
        table.add_row(name, str(row.calls), str(row.ok), str(row.failed),
                      *_latency_cells(row.latency_ms))  # fmt: skip
    table.add_row(Text("all", style="bold"), str(summary.calls), str(summary.ok),
                  str(summary.failed), *_latency_cells(summary.latency_ms))  # fmt: skip
    return table


def _summary_endpoints(summary: LoadSummary, label: Label) -> Table:
    headers = ("Endpoint", "Calls", "Share%", "Failures", "Outruns", "Ejections", "Final state")
    table = _table("Per endpoint", headers, last_left=True)
    for address, row in summary.per_endpoint.items():
        table.add_row(
            Text(endpoint_text(address, label)),
            Text(str(row.calls)),
            Text(f"{row.share * 100:.1f}"),
            Text(str(row.failures)),
            Text(str(row.outruns)),
            Text(str(row.ejections)),
            Text(row.state, style=_STATE_STYLES.get(row.state, "")),
        )
    return table


def _summary_head(summary: LoadSummary) -> list[Text]:
    failed = "bold red" if summary.failed else "bold green"
    head = [
        _line(
            ("Load ", "bold"),
            f"{summary.duration:.1f}s  ",
            ("calls ", "bold"),
            f"{summary.calls}  ",
            ("ok ", "bold"),
            f"{summary.ok}  ",
            ("failed ", failed),
            f"{summary.failed}  ",
            ("retries ", "bold"),
            f"{summary.retries}  ",
            ("hedges ", "bold"),
            f"{summary.hedges} (won {summary.hedges_won})  ",
            ("rps ", "bold"),
            f"{summary.rps:.1f}",
        ),
        _line(
            ("Policy ", "bold"),
            f"{summary.policy or '-'}  ",
            ("late ", "bold"),
            f"{summary.late}  ",
            ("seeded ", "bold"),
            f"{summary.seeded}  ",
            ("seed ", "bold"),
            f"{summary.seed if summary.seed is not None else '-'}",
        ),
    ]
    if summary.errors_by_code:
        ranked = sorted(summary.errors_by_code.items(), key=lambda item: (-item[1], item[0]))
        parts: list[str | tuple[str, str]] = [("Errors ", "bold")]
        for code, count in ranked:
            parts += [(code, "red"), f" {count}  "]
        head.append(_line(*parts))
    if summary.interrupted:
        head.insert(
            0, _line(("Interrupted: ", "bold yellow"), "figures of the calls that finished")
        )
    return head


def render_summary(summary: LoadSummary, label: Label = None) -> RenderableType:
    """The end of a run for a person: totals, seed, per operation, per endpoint (80 columns)."""
    repeat = f"repeat with --seed {summary.seed}" if summary.seed is not None else ""
    return Group(
        *_summary_head(summary),
        _operations_table(summary),
        _summary_endpoints(summary, label),
        *([_line((repeat, "dim"))] if repeat else []),
    )
