"""endpoint_events: every state transition, and endpoints that come and go."""

from __future__ import annotations

import itertools

import pytest

from client._endpoint import EndpointState
from client._events import EVENT_KINDS, EndpointEvent, endpoint_events
from client._histogram import LatencySummary
from client._load import EndpointRow, LoadSnapshot

_ZERO = LatencySummary(0, 0, 0, 0, 0)
STATES = [state.value for state in EndpointState]

# Rows: old state; columns: new state (same order). "." = no event.
_COLUMNS = ("DRAINING", "EJECTED", "UNREACHABLE", "NOT_SERVING", "SERVING", "READY", "CONNECTING")
_TABLE = """
DRAINING     .         ejected   .         .         .         .         .
EJECTED      draining  .         .         .         re-admit  re-admit  .
UNREACHABLE  draining  ejected   .         .         re-admit  re-admit  .
NOT_SERVING  draining  ejected   .         .         re-admit  re-admit  .
SERVING      draining  ejected   lost      lost      .         .         .
READY        draining  ejected   lost      lost      .         .         .
CONNECTING   draining  ejected   lost      lost      .         .         .
"""


def _expected() -> dict[tuple[str, str], str | None]:
    table: dict[tuple[str, str], str | None] = {}
    for line in _TABLE.strip().splitlines():
        old, *cells = line.split()
        for new, cell in zip(_COLUMNS, cells, strict=True):
            table[old, new] = {".": None, "re-admit": "re-admitted"}.get(cell, cell)
    return table


def snapshot(elapsed: float, *rows: tuple[str, str]) -> LoadSnapshot:
    return LoadSnapshot(
        elapsed=elapsed, remaining=1.0, calls=0, ok=0, failed=0, in_flight=0, late=0,
        retries=0, rps=0.0, rps_overall=0.0, target_rps=0.0, errors_by_code={},
        latency_ms=_ZERO, window_latency_ms=_ZERO, window_failed=0, window_retries=0,
        endpoints=tuple(EndpointRow(a, s, 0, 0, 0, 0.0) for a, s in rows),
    )  # fmt: skip


def test_the_table_covers_every_pair_of_states() -> None:
    assert sorted(_COLUMNS) == sorted(STATES)
    assert len(_expected()) == len(STATES) ** 2


@pytest.mark.parametrize(("old", "new"), list(itertools.product(_COLUMNS, _COLUMNS)))
def test_each_transition(old: str, new: str) -> None:
    expected = _expected()[old, new]
    events = endpoint_events(snapshot(1.0, ("a:1", old)), snapshot(2.5, ("a:1", new)))
    if expected is None:
        assert events == []
    else:
        assert events == [EndpointEvent(2.5, "a:1", expected, old, new)]  # type: ignore[arg-type]
        assert expected in EVENT_KINDS


def test_the_first_snapshot_adds_every_endpoint() -> None:
    events = endpoint_events(None, snapshot(0.25, ("a:1", "CONNECTING"), ("b:1", "SERVING")))
    assert events == [
        EndpointEvent(0.25, "a:1", "added", None, "CONNECTING"),
        EndpointEvent(0.25, "b:1", "added", None, "SERVING"),
    ]


def test_added_and_removed_between_snapshots_in_a_stable_order() -> None:
    before = snapshot(1.0, ("a:1", "SERVING"), ("b:1", "DRAINING"), ("c:1", "SERVING"))
    after = snapshot(1.5, ("a:1", "UNREACHABLE"), ("d:1", "CONNECTING"))
    assert endpoint_events(before, after) == [
        EndpointEvent(1.5, "a:1", "lost", "SERVING", "UNREACHABLE"),
        EndpointEvent(1.5, "d:1", "added", None, "CONNECTING"),
        EndpointEvent(1.5, "b:1", "removed", "DRAINING", None),
        EndpointEvent(1.5, "c:1", "removed", "SERVING", None),
    ]


def test_nothing_changed_means_no_event() -> None:
    rows = (("a:1", "SERVING"), ("b:1", "EJECTED"))
    assert endpoint_events(snapshot(1.0, *rows), snapshot(2.0, *rows)) == []
    assert endpoint_events(snapshot(1.0), snapshot(2.0)) == []
