"""Hedges in the load generator: counted from the client's stats, shown live and in the summary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from client._client import ClientStats
from client._live import render_snapshot, render_summary, status_line
from client._load import LoadConfig, _Run
from tests.cli.test_live import _assert_fits, _render, _snapshot, _summary
from tests.cli.test_load_engine import FakeClient, _run, virtual_clock


@dataclass
class HedgingClient(FakeClient):
    """FakeClient whose stats say it hedged one call in four, and one hedge in two won."""

    def stats(self) -> ClientStats:
        base = super().stats()
        gets = self.calls.count("get")
        return ClientStats(
            endpoints=base.endpoints,
            calls=base.calls,
            retries=base.retries,
            failures=0,
            hedges=gets // 4 + 7,  # 7 before the run started: not the run's
            hedges_won=gets // 8 + 3,
        )


async def test_the_summary_counts_the_runs_hedges_next_to_its_retries() -> None:
    client = HedgingClient(virtual_clock(), latency=0.01)
    summary = await _run(client, duration=1.0, rps=40)
    gets = client.calls.count("get")
    assert summary.hedges == gets // 4
    assert summary.hedges_won == gets // 8
    document = summary.as_dict()
    assert (document["hedges"], document["hedges_won"]) == (summary.hedges, summary.hedges_won)
    keys = list(document)
    assert keys.index("hedges") == keys.index("retries") + 1
    assert keys.index("hedges_won") == keys.index("hedges") + 1


def test_snapshots_count_hedges_overall_and_in_the_window() -> None:
    clock = virtual_clock()
    client = HedgingClient(clock)
    run = _Run(LoadConfig(duration=10.0), clock, client.stats())  # 7 hedges, 3 won before
    client.calls.extend(["get"] * 8)
    clock.now += 1
    first = run.snapshot(client.stats())
    assert (first.hedges, first.hedges_won, first.window_hedges) == (2, 1, 2)
    client.calls.extend(["get"] * 8)
    clock.now += 1
    second = run.snapshot(client.stats())
    assert (second.hedges, second.hedges_won, second.window_hedges) == (4, 2, 2)


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_view_and_the_summary_show_hedges(width: int) -> None:
    live = _render(render_snapshot(_snapshot(hedges=12, hedges_won=9, window_hedges=2)), width)
    assert "Hedges 12 (won 9)" in live
    assert "hedges 2" in live
    _assert_fits(live, width)
    summary = _render(render_summary(_summary(hedges=40, hedges_won=31)), width)
    assert "hedges 40 (won 31)" in summary
    _assert_fits(summary, width)


def test_the_status_line_shows_hedges() -> None:
    assert status_line(_snapshot(hedges=5, hedges_won=4)).endswith("hedges=5 won=4")
