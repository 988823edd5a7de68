"""Spans kept in the mesh's state directory, and the traces they form.

The receiver appends one JSON object per span to ``spans.jsonl``; ``mesh
traces``, in another process, reads the file while it grows. Invariants:

* one writer (the receiver's task) appends whole lines, each ending in
  ``\\n``; a reader skips a last line that is not finished yet (no ``\\n``) and
  any line that does not parse, so a read never fails on a file being written;
* the disk use is bounded: past ``max_bytes`` the file becomes
  ``spans.jsonl.1`` (replacing the older one) and a new file starts, so at
  most about twice ``max_bytes`` is kept however long ``mesh up`` runs;
* readers read ``spans.jsonl.1`` first, then ``spans.jsonl``: oldest first.

A :class:`Trace` is every span of one trace id; :func:`summarize` says what a
person scanning a list wants to know of it (root call, duration, replicas
touched, retries, hedges, errors).

Retries and hedges are told apart: the client's attempt spans of a hedged call
carry ``meshdemo.hedge.number`` (1 for the first copy, 2 for the first hedge,
…), and its logical span has a ``retry`` event per retry and a ``hedge`` event
per hedge sent. A hedge's losing copy ends CANCELLED with
``meshdemo.hedge.cancelled``: it lost a race, nothing failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SPANS_FILE",
    "AttributeValue",
    "SpanEvent",
    "SpanRecord",
    "SpanStore",
    "Trace",
    "TraceLookupError",
    "TraceSummary",
    "find_trace",
    "group_traces",
    "has_hedge",
    "has_retry",
    "is_attempt",
    "is_hedge",
    "load_trace",
    "read_spans",
    "recent_traces",
    "summarize",
]

#: The span file's name inside the state directory (its rotated twin ends in ``.1``).
SPANS_FILE = "spans.jsonl"
#: Size past which the span file is rotated. A span takes about 500 bytes, a traced call
#: four spans (logical, attempt, server, store): at 200 calls/s two files keep about
#: two and a half minutes, and reading both takes about a second.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024

#: A flattened attribute value: a scalar or a list of scalars.
AttributeValue = str | bool | int | float | list[str | bool | int | float]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """An event on a span: a name, a time and a few attributes (e.g. ``retry``)."""

    name: str
    time_ns: int
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span, flattened.

    Attributes:
        trace_id: 32 hex digits.
        span_id: 16 hex digits.
        parent_span_id: 16 hex digits, or "" for a root span.
        name: The span name (``meshdemo.v1.UserService/GetUser``).
        kind: ``SERVER``, ``CLIENT``, ``INTERNAL``, ``PRODUCER``, ``CONSUMER`` or ``UNSPECIFIED``.
        service: The resource's ``service.name``.
        instance: The replica: the span attribute ``meshdemo.replica``, else the
            resource's ``service.instance.id``, else "".
        start_ns: Start, Unix nanoseconds.
        end_ns: End, Unix nanoseconds.
        status: ``UNSET``, ``OK`` or ``ERROR``.
        status_message: The status description ("" when none).
        attributes: Span attributes, scalars or lists of scalars.
        events: Span events in time order.
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    instance: str
    start_ns: int
    end_ns: int
    status: str = "UNSET"
    status_message: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()

    @property
    def duration_ns(self) -> int:
        """End minus start (never negative)."""
        return max(0, self.end_ns - self.start_ns)

    @property
    def is_error(self) -> bool:
        """Whether the span ended with status ERROR."""
        return self.status == "ERROR"

    def to_json(self) -> str:
        """One line of the span file (no newline)."""
        data = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "instance": self.instance,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "status_message": self.status_message,
            "attributes": dict(self.attributes),
            "events": [
                {"name": e.name, "time_ns": e.time_ns, "attributes": dict(e.attributes)}
                for e in self.events
            ],
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> SpanRecord:
        """Parse one line of the span file.

        Raises:
            ValueError: The line is not a span record.
        """
        try:
            data = json.loads(line)
            events = tuple(
                SpanEvent(str(e["name"]), int(e["time_ns"]), dict(e.get("attributes", {})))
                for e in data.get("events", ())
            )
            return cls(
                trace_id=str(data["trace_id"]),
                span_id=str(data["span_id"]),
                parent_span_id=str(data.get("parent_span_id", "")),
                name=str(data["name"]),
                kind=str(data.get("kind", "UNSPECIFIED")),
                service=str(data.get("service", "")),
                instance=str(data.get("instance", "")),
                start_ns=int(data["start_ns"]),
                end_ns=int(data["end_ns"]),
                status=str(data.get("status", "UNSET")),
                status_message=str(data.get("status_message", "")),
                attributes=dict(data.get("attributes", {})),
                events=events,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a span record: {exc}") from exc


class SpanStore:
    """Appends span records to ``STATE_DIR/spans.jsonl``, rotating past ``max_bytes``.

    Use from one task only (the receiver's); readers in any process use
    :func:`read_spans`. Every write is whole lines in one ``write`` call.

    Args:
        state_dir: The mesh's state directory (created if missing).
        max_bytes: Size past which the file is rotated to ``spans.jsonl.1``.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.state_dir = Path(state_dir)
        self.max_bytes = max_bytes
        self.path = self.state_dir / SPANS_FILE
        self.rotated_path = self.state_dir / (SPANS_FILE + ".1")
        self.rotations = 0

    def __repr__(self) -> str:
        return f"SpanStore({str(self.path)!r}, max_bytes={self.max_bytes})"

    def append(self, records: Iterable[SpanRecord]) -> int:
        """Append ``records``; returns how many were written."""
        lines = [record.to_json() + "\n" for record in records]
        if not lines:
            return 0
        data = "".join(lines).encode()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._size() + len(data) > self.max_bytes and self._size() > 0:
            os.replace(self.path, self.rotated_path)
            self.rotations += 1
        with open(self.path, "ab") as stream:
            stream.write(data)
        return len(lines)

    def read(self) -> list[SpanRecord]:
        """Every stored record, oldest first (see :func:`read_spans`)."""
        return read_spans(self.state_dir)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            yield from stream
    except FileNotFoundError:
        return


def read_spans(state_dir: str | os.PathLike[str]) -> list[SpanRecord]:
    """Every span in the state directory, oldest file first.

    Tolerates a file being written: an unfinished last line and any line that
    does not parse are skipped. No file means no span.
    """
    directory = Path(state_dir)
    records: list[SpanRecord] = []
    for path in (directory / (SPANS_FILE + ".1"), directory / SPANS_FILE):
        for line in _lines(path):
            if not line.endswith("\n"):
                continue  # Still being written.
            try:
                records.append(SpanRecord.from_json(line))
            except ValueError:
                continue
    return records


@dataclass(frozen=True, slots=True)
class Trace:
    """Every span of one trace, ordered by start time."""

    trace_id: str
    spans: tuple[SpanRecord, ...]

    @property
    def start_ns(self) -> int:
        """The earliest span start."""
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        """The latest span end."""
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ns(self) -> int:
        """From the earliest start to the latest end."""
        return max(0, self.end_ns - self.start_ns)

    def root(self) -> SpanRecord:
        """The span with no parent that starts first; else the first span whose parent is absent.

        A trace whose root has not arrived yet still has an answer.
        """
        ids = {s.span_id for s in self.spans}
        roots = [s for s in self.spans if not s.parent_span_id]
        orphans = [s for s in self.spans if s.parent_span_id not in ids]
        return (roots or orphans or list(self.spans))[0]

    def children(self) -> dict[str, list[SpanRecord]]:
        """Spans by parent span id, each list ordered by start; orphans under ""."""
        ids = {s.span_id for s in self.spans}
        tree: dict[str, list[SpanRecord]] = {}
        for span in self.spans:
            parent = span.parent_span_id if span.parent_span_id in ids else ""
            tree.setdefault(parent, []).append(span)
        return tree


def group_traces(spans: Iterable[SpanRecord]) -> dict[str, Trace]:
    """Spans grouped by trace id; a span reported twice (same span id) is kept once."""
    grouped: dict[str, dict[str, SpanRecord]] = {}
    for span in spans:
        grouped.setdefault(span.trace_id, {})[span.span_id] = span
    return {
        trace_id: Trace(trace_id, tuple(sorted(by_id.values(), key=_start_key)))
        for trace_id, by_id in grouped.items()
    }


def _start_key(span: SpanRecord) -> tuple[int, int]:
    return (span.start_ns, -span.end_ns)


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What the trace list shows of one trace.

    Attributes:
        trace_id: 32 hex digits.
        root_name: Name of the root span (the logical call on a client trace).
        start_ns: Start, Unix nanoseconds.
        duration_ns: From the first start to the last end.
        span_count: Number of spans.
        replicas: Instance names of the SERVER spans (the replicas that served it).
        retries: Attempts beyond the first, summed over every call in the trace
            (hedge copies are not retries).
        errors: Spans with status ERROR, but for a hedge's losing copy (cancelled
            because another copy answered first: nothing failed).
        services: Every ``service.name`` in the trace.
        hedges: Hedge copies (copies after the first of a hedged call), summed
            over every call in the trace.
    """

    trace_id: str
    root_name: str
    start_ns: int
    duration_ns: int
    span_count: int
    replicas: frozenset[str]
    retries: int
    errors: int
    services: frozenset[str]
    hedges: int = 0


def is_attempt(span: SpanRecord) -> bool:
    """Whether ``span`` is one attempt of a gRPC call: a CLIENT span with ``rpc.system`` grpc.

    (Store calls are CLIENT spans too, with ``db.system``: not attempts.)
    """
    return span.kind == "CLIENT" and span.attributes.get("rpc.system") == "grpc"


def is_hedge(span: SpanRecord) -> bool:
    """Whether ``span`` is a hedge: an attempt (see :func:`is_attempt`) whose
    ``meshdemo.hedge.number`` is 2 or more (1 is a hedged call's first copy)."""
    number = span.attributes.get("meshdemo.hedge.number")
    hedged = isinstance(number, int) and not isinstance(number, bool) and number > 1
    return hedged and is_attempt(span)


def _lost_the_race(span: SpanRecord) -> bool:
    return span.attributes.get("meshdemo.hedge.cancelled") is True


def _events(span: SpanRecord, name: str) -> int:
    return sum(1 for event in span.events if event.name == name)


def _retries_under(span: SpanRecord, children: Sequence[SpanRecord]) -> int:
    """Attempts beyond the first of the call ``span`` stands for.

    The larger of two signs: attempt children (see :func:`is_attempt`) that
    are not hedges, minus one, and the ``retry`` events the client adds to its
    logical span (which still count when an attempt span was lost).
    """
    attempts = sum(1 for child in children if is_attempt(child) and not is_hedge(child))
    return max(attempts - 1, _events(span, "retry"), 0)


def _hedges_under(span: SpanRecord, children: Sequence[SpanRecord]) -> int:
    """Hedges sent for the call ``span`` stands for: the larger of its hedge children
    and the ``hedge`` events on it (which still count when a copy's span was lost)."""
    return max(sum(1 for child in children if is_hedge(child)), _events(span, "hedge"))


def summarize(trace: Trace) -> TraceSummary:
    """The :class:`TraceSummary` of ``trace``."""
    tree = trace.children()
    return TraceSummary(
        trace_id=trace.trace_id,
        root_name=trace.root().name,
        start_ns=trace.start_ns,
        duration_ns=trace.duration_ns,
        span_count=len(trace.spans),
        replicas=frozenset(s.instance for s in trace.spans if s.kind == "SERVER" and s.instance),
        retries=sum(_retries_under(s, tree.get(s.span_id, ())) for s in trace.spans),
        errors=sum(1 for s in trace.spans if s.is_error and not _lost_the_race(s)),
        services=frozenset(s.service for s in trace.spans if s.service),
        hedges=sum(_hedges_under(s, tree.get(s.span_id, ())) for s in trace.spans),
    )


def has_retry(trace: Trace) -> bool:
    """Whether any call in ``trace`` was retried (a predicate for find_trace); hedges aside."""
    return summarize(trace).retries > 0


def has_hedge(trace: Trace) -> bool:
    """Whether any call in ``trace`` sent a hedge (a predicate for find_trace)."""
    return summarize(trace).hedges > 0


def _newest_first(state_dir: str | os.PathLike[str]) -> list[Trace]:
    traces = group_traces(read_spans(state_dir)).values()
    return sorted(traces, key=lambda t: t.start_ns, reverse=True)


def recent_traces(state_dir: str | os.PathLike[str], limit: int = 20) -> list[TraceSummary]:
    """Summaries of the ``limit`` most recently started traces, newest first."""
    return [summarize(t) for t in _newest_first(state_dir)[: max(0, limit)]]


def find_trace(
    state_dir: str | os.PathLike[str],
    predicate: Callable[[Trace], bool],
    *fallbacks: Callable[[Trace], bool],
) -> Trace | None:
    """The newest trace for which ``predicate`` holds (e.g. :func:`has_retry`), or None.

    With ``fallbacks`` (e.g. :func:`has_hedge`): when no trace satisfies
    ``predicate``, the newest that satisfies the first fallback, and so on;
    the span files are read once.
    """
    traces = _newest_first(state_dir)
    for wanted in (predicate, *fallbacks):
        found = next((t for t in traces if wanted(t)), None)
        if found is not None:
            return found
    return None


class TraceLookupError(LookupError):
    """No trace, or more than one, matches a trace id prefix; the message says which."""


def load_trace(state_dir: str | os.PathLike[str], trace_id_prefix: str) -> Trace:
    """The trace whose id starts with ``trace_id_prefix`` (case-insensitive).

    Raises:
        TraceLookupError: No trace matches, or the prefix is ambiguous.
    """
    prefix = trace_id_prefix.strip().lower()
    if not prefix:
        raise TraceLookupError("empty trace id")
    traces = group_traces(read_spans(state_dir))
    matches = sorted(t for t in traces if t.startswith(prefix))
    if not matches:
        raise TraceLookupError(f"no trace {prefix!r} in {Path(state_dir) / SPANS_FILE}")
    if len(matches) > 1:
        shown = ", ".join(m[:16] for m in matches[:5])
        raise TraceLookupError(f"trace id {prefix!r} is ambiguous: {len(matches)} match ({shown})")
    return traces[matches[0]]
