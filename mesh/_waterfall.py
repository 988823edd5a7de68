"""Traces in the terminal: a list of recent traces, and one trace as a waterfall.

Plain text that reads the same piped to a file: no colour, no cursor moves,
every line at most ``width`` columns (names are cut with an ellipsis). Where
the output cannot encode the bar and check marks (not UTF-8), the same
picture is drawn in ASCII.

A waterfall row per span, children under their parent ordered by start::

    SERVICE SPAN              REPLICA   START |BAR            |    DUR STATUS
    client  GetUser           -           0.0 |██████████████ |   31.2 ✓
    client   attempt 1        -           1.0 |█              |    4.0 ✗ UNAVAILABLE
    client   attempt 2        -          10.0 |    ██████     |   19.0 ✓
    user      GetUser         users-1    12.0 |     █████     |   16.0 ✓

Each attempt of a retried call (the gRPC CLIENT spans under a logical call) is its
own row, named ``attempt N``; a failed attempt shows ``✗`` and its gRPC code,
a cancelled one (a hedge's loser) ``⊘ CANCELLED``, the winner ``✓``. A hedge
(a later copy of a hedged call, sent to another replica while the earlier had
no answer or had failed: ``meshdemo.hedge.number`` 2 or more) is its own row
too, named ``hedge N`` (the call's Nth hedge), not counted as an attempt::

    client  GetUser           -           0.0 |██████████████ |   31.2 ✓
    client   attempt 1        users-0     1.0 |██████████████ |   30.0 ⊘ CANCELLED
    client   hedge 1          users-1    10.0 |    ██████     |   19.0 ✓
    user      GetUser         users-1    12.0 |     █████     |   16.0 ✓

The header counts retries and, when there were any, hedges apart; a hedge's
losing copy is no error there (it lost a race, nothing failed).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc

from mesh._spans import SpanRecord, Trace, TraceSummary, is_attempt, is_hedge, summarize

__all__ = [
    "ASCII",
    "UNICODE",
    "Glyphs",
    "render_trace_list",
    "render_waterfall",
    "short_name",
    "status_text",
    "wants_ascii",
]

_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_STATUS_ATTR = "rpc.grpc.status_code"
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]


@dataclass(frozen=True, slots=True)
class Glyphs:
    """The characters a waterfall is drawn with."""

    bar: str
    ok: str
    failed: str
    cancelled: str
    ellipsis: str


UNICODE = Glyphs(bar="█", ok="✓", failed="✗", cancelled="⊘", ellipsis="…")
ASCII = Glyphs(bar="#", ok="ok", failed="X", cancelled="-", ellipsis="~")


def wants_ascii(stream: object = None) -> bool:
    """Whether ``stream`` (default: stdout) cannot encode the Unicode glyphs."""
    encoding = getattr(stream if stream is not None else sys.stdout, "encoding", None)
    try:
        "".join((UNICODE.bar, UNICODE.ok, UNICODE.failed, UNICODE.cancelled)).encode(
            encoding or "ascii"
        )
    except (UnicodeEncodeError, LookupError):
        return True
    return False


def _glyphs(ascii_only: bool | None) -> Glyphs:
    return ASCII if (wants_ascii() if ascii_only is None else ascii_only) else UNICODE


def _fit(text: str, width: int, glyphs: Glyphs) -> str:
    """``text`` cut to ``width`` columns, the cut marked with an ellipsis."""
    if len(text) <= width:
        return text
    if width <= len(glyphs.ellipsis):
        return text[:width]
    return text[: width - len(glyphs.ellipsis)] + glyphs.ellipsis


def short_name(name: str) -> str:
    """A span name without its package and service: ``/meshdemo.v1.UserService/GetUser``
    and ``meshdemo.v1.UserService/GetUser logical`` both read ``GetUser``."""
    return name.removesuffix(" logical").rsplit("/", 1)[-1]


def _short_service(service: str) -> str:
    return service.removeprefix("meshdemo-").removesuffix("-service") or "?"


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.1f}"


# --- the list -----------------------------------------------------------------------------


def _clock(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S")


def render_trace_list(
    summaries: Iterable[TraceSummary], *, width: int = 80, ascii_only: bool | None = None
) -> str:
    """A table of traces, one row each, in the order given (``recent_traces`` is newest first).

    Columns: short trace id (16 hex digits, enough for ``mesh traces ID``),
    local start time, root call, duration in ms, span count, retries, hedges,
    errors, and the replicas that served it.

    Args:
        summaries: From :func:`mesh._spans.recent_traces` or :func:`mesh._spans.summarize`.
        width: Columns the table must fit (the replica list is cut to fit).
        ascii_only: Force (True) or forbid (False) ASCII; None decides from stdout.
        names: Replica names by ``host:port``, for the client's attempt spans, which
            know only the address they dialled (``server.address``, ``server.port``).
    """
    glyphs = _glyphs(ascii_only)
    rows = list(summaries)
    if not rows:
        return "no traces yet"
    header = (
        f"{'TRACE':<16} {'START':<8} {'CALL':<16} {'MS':>6} {'SPANS':>5} {'RETRY':>5} "
        f"{'HEDGE':>5} {'ERR':>3}"
    )
    room = max(0, width - len(header) - 1)
    lines = [_fit(f"{header} REPLICAS", width, glyphs)]
    for s in rows:
        replicas = ",".join(sorted(s.replicas)) or "-"
        line = (
            f"{s.trace_id[:16]:<16} {_clock(s.start_ns):<8} "
            f"{_fit(short_name(s.root_name), 16, glyphs):<16} {_ms(s.duration_ns):>6} "
            f"{s.span_count:>5} {s.retries:>5} {s.hedges:>5} {s.errors:>3} "
            f"{_fit(replicas, room, glyphs)}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


# --- the waterfall ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    span: SpanRecord
    depth: int
    label: str
    server_side: bool


def _rows(trace: Trace) -> Iterator[_Row]:
    """The span tree depth first, children by start; orphans at the root, then their trees."""
    tree = trace.children()

    def walk(span: SpanRecord, depth: int, label: str, server_side: bool) -> Iterator[_Row]:
        server_side = server_side or span.kind == "SERVER"
        yield _Row(span, depth, label, server_side)
        attempt = hedge = 0
        for child in tree.get(span.span_id, ()):
            if is_hedge(child):
                hedge += 1
                child_label = f"hedge {hedge}"
            elif is_attempt(child):
                attempt += 1
                child_label = f"attempt {attempt}"
            else:
                child_label = short_name(child.name)
            yield from walk(child, depth + 1, child_label, server_side)

    for top in tree.get("", ()):
        yield from walk(top, 0, short_name(top.name), False)


def _code(span: SpanRecord) -> int | None:
    value = span.attributes.get(_STATUS_ATTR)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_text(span: SpanRecord, glyphs: Glyphs = UNICODE) -> str:
    """``✓``, ``✓ NOT_FOUND`` (a code that is no fault), ``✗ UNAVAILABLE``, ``⊘ CANCELLED``."""
    code = _code(span)
    name = _CODES.get(code, str(code)) if code is not None else ""
    if code == _CANCELLED:
        return f"{glyphs.cancelled} CANCELLED"
    if span.is_error:
        return f"{glyphs.failed} {name or span.status_message or 'ERROR'}"
    return f"{glyphs.ok} {name}" if code else glyphs.ok


def _bar(span: SpanRecord, trace: Trace, width: int, glyphs: Glyphs) -> str:
    """The span's extent on a ``width``-column axis from trace start to trace end (>= 1 mark)."""
    total = max(trace.duration_ns, 1)
    first = min(width - 1, (span.start_ns - trace.start_ns) * width // total)
    last = max(first + 1, -(-(span.end_ns - trace.start_ns) * width // total))
    last = min(width, last)
    return " " * first + glyphs.bar * (last - first) + " " * (width - last)


@dataclass(frozen=True, slots=True)
class _Layout:
    name: int
    bar: int

    @classmethod
    def fitting(cls, width: int, labels: Sequence[str], statuses: Sequence[str]) -> _Layout:
        """Name and bar widths for ``width`` columns: the name as wide as its longest
        label (at most 30), leaving the bar at least 12 columns; the bar gets the rest."""
        # service 7, replica 8, start 6, two bar rails, duration 6, six gaps, then the status.
        status = min(13, max((len(s) for s in statuses), default=1))
        room = max(12, width - 7 - 8 - 6 - 2 - 6 - 6 - status)
        longest = max((len(label) for label in labels), default=4)
        name = max(8, min(longest, 30, room - 12))
        return cls(name=name, bar=max(4, room - name))


def _header(trace: Trace, glyphs: Glyphs, width: int) -> list[str]:
    s = summarize(trace)
    when = datetime.datetime.fromtimestamp(s.start_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    replicas = ",".join(sorted(s.replicas)) or "-"
    title = f"trace {trace.trace_id}  {short_name(s.root_name)}  {_ms(s.duration_ns)} ms  {when}"
    hedges = f"{s.hedges} hedges, " if s.hedges else ""
    facts = (
        f"{s.span_count} spans, {s.retries} retries, {hedges}{s.errors} errors, replicas {replicas}"
    )
    return [_fit(title, width, glyphs), _fit(facts, width, glyphs)]


def render_waterfall(
    trace: Trace,
    width: int = 80,
    *,
    ascii_only: bool | None = None,
    names: Mapping[str, str] | None = None,
) -> str:
    """One trace as a waterfall: a header, then one row per span (see the module doc).

    Rows: service (short), span name indented by depth, replica (for spans
    on the server side), start offset in ms from the trace start, a bar
    scaled to the trace's duration, the duration in ms, and the status.

    Args:
        trace: From :func:`mesh._spans.load_trace` or :func:`mesh._spans.find_trace`.
        width: Columns every line fits (at least 60 is readable; 80 by default).
        ascii_only: Force (True) or forbid (False) ASCII; None decides from stdout.
        names: Replica names by ``host:port``, for the client's attempt spans, which
            know only the address they dialled (``server.address``, ``server.port``).
    """
    glyphs = _glyphs(ascii_only)
    rows = list(_rows(trace))
    layout = _Layout.fitting(
        width,
        [" " * r.depth + r.label for r in rows],
        [status_text(r.span, glyphs) for r in rows],
    )
    lines = _header(trace, glyphs, width)
    axis = f"0{_ms(trace.duration_ns) + ' ms':>{layout.bar - 1}}"[: layout.bar]
    lines.append(
        f"{'SERVICE':<7} {'SPAN':<{layout.name}} {'REPLICA':<8} {'START':>6} "
        f"|{axis}| {'MS':>6} STATUS"
    )
    for row in rows:
        lines.append(_fit(_row_line(row, trace, layout, glyphs, names or {}), width, glyphs))
    return "\n".join(line.rstrip() for line in lines)


def _replica_of(row: _Row, names: Mapping[str, str]) -> str:
    """Where a span ran: the server's instance, or the replica an attempt dialled."""
    span = row.span
    if row.server_side:
        return span.instance or "-"
    host = span.attributes.get("server.address")
    if not isinstance(host, str) or not host:
        return "-"
    port = span.attributes.get("server.port")
    return names.get(f"{host}:{port}", host)


def _row_line(
    row: _Row, trace: Trace, layout: _Layout, glyphs: Glyphs, names: Mapping[str, str]
) -> str:
    span = row.span
    name = _fit(" " * row.depth + row.label, layout.name, glyphs)
    replica = _fit(_replica_of(row, names), 8, glyphs)
    return (
        f"{_fit(_short_service(span.service), 7, glyphs):<7} {name:<{layout.name}} "
        f"{replica:<8} {_ms(span.start_ns - trace.start_ns):>6} "
        f"|{_bar(span, trace, layout.bar, glyphs)}| {_ms(span.duration_ns):>6} "
        f"{status_text(span, glyphs)}"
    )
