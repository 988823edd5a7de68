"""The live view, the plain progress lines and the summary, rendered to strings."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console, RenderableType

from client._events import EndpointEvent
from client._histogram import LatencySummary
from client._live import (
    ENDPOINT_COLUMNS,
    LiveView,
    PlainProgress,
    endpoint_text,
    format_event,
    render_snapshot,
    render_summary,
    status_line,
)
from client._load import EndpointRow, LoadConfig, LoadSnapshot, LoadSummary, OperationRow

LAT = LatencySummary(p50=1.25, p95=4.5, p99=9.75, max=12.0, mean=2.0)
SLOW = LatencySummary(p50=40.0, p95=80.0, p99=123.5, max=250.0, mean=45.0)
TWO = (
    EndpointRow("127.0.0.2:40001", "SERVING", 2, 90, 1, 0.6, rate=55.5, ejections=0, outruns=3),
    EndpointRow("127.0.0.3:40002", "EJECTED", 2, 60, 2, 0.4, rate=0.0, ejections=1),
)
#: Five endpoints with long addresses and every troublesome width.
FIVE = (
    EndpointRow("[::1]:50051", "SERVING", 16, 9_999_999, 0, 0.5, rate=12345.6, ejections=0,
                outruns=999),
    EndpointRow("127.0.0.3:50051", "UNREACHABLE", 0, 600_000, 20_000, 0.2, 0.0, 12),
    EndpointRow("[fd00:1234:5678:9abc:def0:1234:5678:9abc]:50051", "NOT_SERVING", 0, 60, 2,
                0.1, 0.0, 3),
    EndpointRow("127.0.0.5:50051", "CONNECTING", 0, 0, 0, 0.0, 0.0, 0),
    EndpointRow("127.0.0.6:50051", "DRAINING", 1, 123_456, 7, 0.2, 999.9, 100, 45),
)  # fmt: skip
LABELS = {
    "[::1]:50051": "users-0",
    "127.0.0.3:50051": "users-1",
    "127.0.0.6:50051": "a-very-long-replica-name-from-a-statefulset-7",
}


def _snapshot(elapsed: float = 1.5, remaining: float = 3.5, **overrides: Any) -> LoadSnapshot:
    values: dict[str, Any] = {
        "elapsed": elapsed, "remaining": remaining, "calls": 150, "ok": 147, "failed": 3,
        "in_flight": 4, "late": 2, "retries": 1, "rps": 99.5, "rps_overall": 100.0,
        "target_rps": 100.0, "errors_by_code": {"UNAVAILABLE": 2, "NOT_FOUND": 1},
        "latency_ms": LAT, "endpoints": TWO, "window_latency_ms": SLOW, "window_failed": 2,
        "window_retries": 5,
    }  # fmt: skip
    values.update(overrides)
    return LoadSnapshot(**values)


def _summary(**overrides: Any) -> LoadSummary:
    values: dict[str, Any] = {
        "calls": 1000, "ok": 997, "failed": 3, "late": 0, "retries": 4, "seeded": 10,
        "duration": 10.0, "rps": 100.0, "errors_by_code": {"UNAVAILABLE": 3}, "latency_ms": LAT,
        "per_endpoint": {r.address: r for r in FIVE}, "policy": "least_conn",
        "config": LoadConfig(duration=10.0), "seed": 1234567,
        "per_operation": {
            "get": OperationRow(800, 798, 2, LAT),
            "create": OperationRow(100, 99, 1, SLOW),
            "list": OperationRow(100, 100, 0, LAT),
        },
    }  # fmt: skip
    values.update(overrides)
    return LoadSummary(**values)


def _render(renderable: RenderableType, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def _assert_fits(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"


# --- the live view ----------------------------------------------------------------------------


def test_view_names_endpoints_columns_and_figures() -> None:
    text = _render(render_snapshot(_snapshot()))
    for expected in (*ENDPOINT_COLUMNS, "127.0.0.2:40001", "127.0.0.3:40002", "SERVING",
                     "EJECTED", "60.0", "40.0", "55.5", "UNAVAILABLE", "NOT_FOUND", "p50", "p95",
                     "p99", "1.25", "9.75", "Retries", "In-flight", "Elapsed", "Remaining",
                     "Achieved rps", "Late", "Last tick", "124", "failed 2",
                     "retries 5"):  # fmt: skip
        assert expected in text, expected


def _cells(text: str, address: str) -> list[str]:
    """The cells of the table row (or summary row) that starts with ``address``."""
    [line] = [line for line in text.splitlines() if line.startswith(address + " ")]
    return line.split()


def test_outruns_have_their_own_column_and_are_not_failures() -> None:
    text = _render(render_snapshot(_snapshot()), width=80)
    [header] = [line for line in text.splitlines() if line.startswith("Endpoint ")]
    assert header.split() == list(ENDPOINT_COLUMNS)
    # SERVING, rate, share, in flight, calls, Fail 1, Out 3, Ej 0
    assert _cells(text, "127.0.0.2:40001")[1:] == ["SERVING", "55.5", "60.0", "2", "90", "1",
                                                   "3", "0"]  # fmt: skip
    assert _cells(text, "127.0.0.3:40002")[6:] == ["2", "0", "1"]


def test_rates_from_1000_per_second_drop_their_tenths() -> None:
    text = _render(render_snapshot(_snapshot(endpoints=FIVE)), width=80)
    assert _cells(text, "[::1]:50051")[2] == "12346"
    assert _cells(text, "127.0.0.6:50051")[2] == "999.9"


def test_view_before_any_endpoint_or_error() -> None:
    text = _render(render_snapshot(_snapshot(endpoints=(), errors_by_code={}, target_rps=0.0)))
    assert "(no endpoint yet)" in text
    assert "Errors none" in text
    assert "closed loop" in text
    assert "(none yet)" in text  # the event log


@pytest.mark.parametrize("label", [None, LABELS, LABELS.get])
def test_nothing_wraps_in_80_columns(label: Any) -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, record=True, force_terminal=True)
    snapshot = _snapshot(
        elapsed=86_399.9, remaining=86_399.9, calls=99_999_999, ok=99_999_000, failed=999,
        in_flight=10_000, late=12_345_678, retries=9_999_999, rps=99_999.9,
        rps_overall=99_999.9, target_rps=100_000.0, endpoints=FIVE,
        errors_by_code={"UNAVAILABLE": 500, "DEADLINE_EXCEEDED": 60, "NOT_FOUND": 7,
                        "RESOURCE_EXHAUSTED": 1, "UNAUTHENTICATED": 3},
    )  # fmt: skip
    with LiveView(Console(file=io.StringIO(), width=80), label=label) as view:
        view.update(_snapshot(endpoints=FIVE[:2]))
        view.update(snapshot)
    console.print(view.renderable())
    text = console.export_text()
    _assert_fits(text)
    assert "127.0.0.5:50051  added (CONNECTING)" in text  # the event log is drawn too
    for address in ("[::1]:50051", "127.0.0.3:50051", "127.0.0.5:50051", ":50051"):
        assert address in text
    # One line per endpoint row: nothing spilled onto a second line.
    table_rows = [line for line in text.splitlines() if ":50051" in line and "s  " not in line]
    assert len(table_rows) >= 5
    _assert_fits(_render(render_summary(_summary(), label=label), width=80))


def test_labels_show_beside_the_address_and_are_cut_first() -> None:
    assert endpoint_text("127.0.0.3:50051", LABELS) == "users-1 127.0.0.3:50051"
    assert endpoint_text("127.0.0.3:50051", LABELS.get) == "users-1 127.0.0.3:50051"
    assert endpoint_text("127.0.0.9:50051", LABELS) == "127.0.0.9:50051"  # no name known
    assert endpoint_text("127.0.0.3:50051", lambda a: a) == "127.0.0.3:50051"
    cut = endpoint_text("127.0.0.6:50051", LABELS)
    assert cut == "a-very-lo… 127.0.0.6:50051"
    assert len(cut) == 26
    long_address = "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:50051"
    shown = endpoint_text(long_address, {long_address: "users-2"})
    assert len(shown) == 26
    assert shown.startswith("[fd00") and shown.endswith(":50051") and "…" in shown


def test_states_have_their_own_styles() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    console.print(render_snapshot(_snapshot(endpoints=FIVE)))
    lines = out.getvalue().splitlines()
    unreachable = next(line for line in lines if "UNREACHABLE" in line)
    connecting = next(line for line in lines if "CONNECTING" in line)
    assert "\x1b[1;31mUNREACHABLE" in unreachable  # bold red
    assert "\x1b[2mCONNECTING" in connecting  # dim


def test_the_live_view_logs_each_change_with_its_time() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, record=True, color_system=None)
    serving = (TWO[0], EndpointRow("127.0.0.3:40002", "SERVING", 2, 60, 2, 0.4))
    with LiveView(console, label=LABELS, event_lines=3) as view:
        view.update(_snapshot(elapsed=0.25, endpoints=serving))
        lost = (TWO[0], EndpointRow("127.0.0.3:40002", "UNREACHABLE", 0, 60, 2, 0.4))
        view.update(_snapshot(elapsed=12.3, endpoints=lost))
        back = (TWO[0], EndpointRow("127.0.0.3:40002", "SERVING", 0, 60, 2, 0.4))
        view.update(_snapshot(elapsed=15.0, endpoints=back))
    kinds = [(e.time, e.kind) for e in view.events]
    assert kinds == [(0.25, "added"), (0.25, "added"), (12.3, "lost"), (15.0, "re-admitted")]
    final = _render(view.renderable(), width=80).split("Events")[-1]
    assert "   12.3s  127.0.0.3:40002  lost (UNREACHABLE)" in final
    assert "   15.0s  127.0.0.3:40002  re-admitted (SERVING)" in final
    assert final.count("added") == 1  # only the last three lines stay


def test_format_event() -> None:
    lost = EndpointEvent(12.3, "127.0.0.3:50051", "lost", "SERVING", "UNREACHABLE")
    assert format_event(lost) == "   12.3s  127.0.0.3:50051  lost (UNREACHABLE)"
    assert format_event(lost, LABELS) == "   12.3s  users-1 127.0.0.3:50051  lost (UNREACHABLE)"
    gone = EndpointEvent(1.0, "a:1", "removed", "DRAINING", None)
    assert format_event(gone) == "    1.0s  a:1  removed"
    ejected = EndpointEvent(2.0, "a:1", "ejected", "SERVING", "EJECTED")
    assert format_event(ejected) == "    2.0s  a:1  ejected"


# --- plain lines ------------------------------------------------------------------------------


def test_plain_progress_writes_figures_once_per_interval_and_at_the_end() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, interval=1.0)
    for elapsed in (0.25, 0.5, 1.0, 1.25, 1.5, 2.1):
        progress.update(_snapshot(elapsed=elapsed))
    progress.update(_snapshot(elapsed=2.2, remaining=0.0))
    lines = out.getvalue().splitlines()
    status = [line.split()[0] for line in lines if line.startswith("t=")]
    assert status == ["t=1.0s", "t=2.1s", "t=2.2s"]
    endpoint_lines = [line for line in lines if line.startswith("  127.0.0.2:40001 ")]
    assert len(endpoint_lines) == 3
    assert endpoint_lines[0].endswith(
        "SERVING rate=55.5/s share=60.0% calls=90 failed=1 ejected=0 outrun=3"
    )


def test_plain_progress_prints_events_as_they_happen() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, interval=10.0, label=LABELS)
    progress.update(_snapshot(elapsed=0.25, endpoints=FIVE[:2]))
    drained = (FIVE[0], FIVE[1], FIVE[4])
    progress.update(_snapshot(elapsed=0.5, endpoints=drained))
    progress.update(_snapshot(elapsed=0.75, endpoints=drained))
    lines = out.getvalue().splitlines()
    assert lines == [
        "    0.2s  users-0 [::1]:50051  added (SERVING)",
        "    0.2s  users-1 127.0.0.3:50051  added (UNREACHABLE)",
        "    0.5s  a-very-lo… 127.0.0.6:50051  added (DRAINING)",
    ]
    assert [e.kind for e in progress.events] == ["added", "added", "added"]


def test_status_line_has_the_tick_figures() -> None:
    line = status_line(_snapshot())
    assert line.startswith("t=1.5s left=3.5s calls=150 failed=3 (+2) retries=1 (+5) late=2")
    assert "rps=99.5 p50=1.25ms p99=9.75ms recent_p99=123.50ms" in line


def test_status_line_since_an_earlier_snapshot() -> None:
    earlier = _snapshot(elapsed=0.5, calls=50, failed=1, retries=0)
    line = status_line(_snapshot(elapsed=1.5), since=earlier, recent_p99=7.0)
    assert "failed=3 (+2) retries=1 (+1)" in line
    assert "rps=100.0 " in line  # 100 calls in 1 s
    assert line.endswith("recent_p99=7.00ms hedges=0 won=0")


def test_plain_figures_cover_the_interval_not_the_last_tick() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, interval=1.0)
    a0 = EndpointRow("127.0.0.2:40001", "SERVING", 0, 100, 0, 0.5, rate=999.0)
    a1 = EndpointRow("127.0.0.2:40001", "SERVING", 0, 130, 0, 0.5, rate=999.0)
    a2 = EndpointRow("127.0.0.2:40001", "SERVING", 0, 160, 0, 0.5, rate=999.0)
    progress.update(_snapshot(elapsed=1.0, endpoints=(a0,), window_latency_ms=LAT))
    progress.update(_snapshot(elapsed=1.5, endpoints=(a1,), window_latency_ms=SLOW))
    progress.update(_snapshot(elapsed=2.0, endpoints=(a2,), window_latency_ms=LAT))
    figures = [line for line in out.getvalue().splitlines() if "rate=" in line]
    assert "rate=999.0/s" in figures[0]  # the first line knows only the last tick
    assert "rate=60.0/s" in figures[1]  # 60 calls in the second since
    statuses = [line for line in out.getvalue().splitlines() if line.startswith("t=")]
    assert statuses[1].endswith("recent_p99=123.50ms hedges=0 won=0")  # the worst tick between


# --- the summary ------------------------------------------------------------------------------


def test_summary_shows_totals_operations_endpoints_and_seed() -> None:
    text = _render(render_summary(_summary(), label=LABELS), width=80)
    for expected in ("calls 1000", "ok 997", "failed 3", "retries 4", "rps 100.0",
                     "seed 1234567", "UNAVAILABLE 3", "Per operation", "get", "create",
                     "list", "all", "124", "Per endpoint", "users-1 127.0.0.3:50051",
                     "UNREACHABLE", "DRAINING", "Final state", "Ejections",
                     "repeat with --seed 1234567"):  # fmt: skip
        assert expected in text, expected
    assert "Interrupted" not in text


def test_summary_shows_outruns_apart_from_failures() -> None:
    text = _render(render_summary(_summary()), width=80)
    [header] = [line for line in text.splitlines() if line.startswith("Endpoint ")]
    assert header.split()[:6] == ["Endpoint", "Calls", "Share%", "Failures", "Outruns",
                                  "Ejections"]  # fmt: skip
    # calls, share, failures, outruns, ejections, final state
    assert _cells(text, "[::1]:50051")[1:] == ["9999999", "50.0", "0", "999", "0", "SERVING"]
    assert _cells(text, "127.0.0.6:50051")[1:] == ["123456", "20.0", "7", "45", "100",
                                                   "DRAINING"]  # fmt: skip


def test_an_interrupted_summary_says_so() -> None:
    text = _render(render_summary(_summary(interrupted=True, seed=None)), width=80)
    assert text.startswith("Interrupted: figures of the calls that finished")
    assert "seed -" in text
    assert "repeat with" not in text
