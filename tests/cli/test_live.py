"""The live view and the plain progress lines, rendered to strings."""

from __future__ import annotations

import io

from rich.console import Console

from client._histogram import LatencySummary
from client._live import ENDPOINT_COLUMNS, LiveView, PlainProgress, render_snapshot, status_line
from client._load import EndpointRow, LoadSnapshot


def _snapshot(elapsed: float = 1.5, remaining: float = 3.5, **overrides: object) -> LoadSnapshot:
    values: dict[str, object] = {
        "elapsed": elapsed,
        "remaining": remaining,
        "calls": 150,
        "ok": 147,
        "failed": 3,
        "in_flight": 4,
        "late": 2,
        "retries": 1,
        "rps": 99.5,
        "rps_overall": 100.0,
        "target_rps": 100.0,
        "errors_by_code": {"UNAVAILABLE": 2, "NOT_FOUND": 1},
        "latency_ms": LatencySummary(p50=1.25, p95=4.5, p99=9.75, max=12.0, mean=2.0),
        "endpoints": (
            EndpointRow("127.0.0.2:40001", "SERVING", 2, 90, 1, 0.6),
            EndpointRow("127.0.0.3:40002", "EJECTED", 2, 60, 2, 0.4),
        ),
    }
    values.update(overrides)
    return LoadSnapshot(**values)  # type: ignore[arg-type]


def _render(snapshot: LoadSnapshot) -> str:
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    console.print(render_snapshot(snapshot))
    return console.export_text()


def test_view_names_endpoints_columns_and_figures() -> None:
    text = _render(_snapshot())
    for expected in (*ENDPOINT_COLUMNS, "127.0.0.2:40001", "127.0.0.3:40002", "SERVING",
                     "EJECTED", "60.0", "40.0", "UNAVAILABLE", "NOT_FOUND", "p50", "p95",
                     "p99", "1.25", "9.75", "Retries", "In-flight", "Elapsed", "Remaining",
                     "Achieved rps", "Late"):  # fmt: skip
        assert expected in text, expected


def test_view_before_any_endpoint_or_error() -> None:
    text = _render(_snapshot(endpoints=(), errors_by_code={}, target_rps=0.0))
    assert "(no endpoint yet)" in text
    assert "none" in text
    assert "closed loop" in text


def test_live_view_draws_on_a_console() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    with LiveView(console) as view:
        view.update(_snapshot())
    assert "127.0.0.3:40002" in out.getvalue()


def test_plain_progress_writes_at_most_once_per_interval_and_at_the_end() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, interval=1.0)
    for elapsed in (0.25, 0.5, 1.0, 1.25, 1.5, 2.1):
        progress.update(_snapshot(elapsed=elapsed))
    progress.update(_snapshot(elapsed=2.2, remaining=0.0))
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["t=1.0s", "t=2.1s", "t=2.2s"]


def test_status_line_has_the_shares() -> None:
    line = status_line(_snapshot())
    assert "127.0.0.2:40001=60%" in line
    assert "p99=9.75ms" in line
    assert status_line(_snapshot(endpoints=())).endswith("endpoints: -")
