"""A quick run of every service benchmark with tiny bounds.

Only that the figures are present and sane: no wall-clock assertion, since
the machine is shared and a smoke run says nothing about speed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from bench.service import __main__ as cli
from bench.service._common import Row
from bench.service._procs import Spawned, cpu_seconds, replica_env, rss_mb

pytestmark = pytest.mark.slow


def _by_figure(rows: list[Row]) -> dict[str, Row]:
    return {row.figure: row for row in rows}


def _sane(row: Row) -> None:
    assert math.isfinite(row.value), row
    assert row.value > 0, row


@pytest.mark.timeout(120)
async def test_quick_run_of_every_benchmark() -> None:
    rows = await cli.run(list(cli.BENCHMARKS), cli.QUICK)
    figures = _by_figure(rows)
    assert {row.benchmark for row in rows} == set(cli.BENCHMARKS)
    for row in rows:
        _sane(row)
        assert (row.met is None) == (row.goal == ""), row
    # Ratios of two positive rates; the traced replica exported every span.
    assert figures["replica / echo GetUser calls/s"].unit == "x"
    export = figures["spans received / spans sent (traced)"]
    assert export.detail["sent"] > 0
    assert export.detail["received"] == export.detail["sent"]
    # A replica takes tens of MiB; more streams never need less memory.
    idle = figures["VmRSS idle"].value
    assert 10 < idle < 1024
    assert figures[f"VmRSS with {cli.QUICK.streams} Chat streams open"].value >= idle * 0.9
    assert len(figures["process start to SERVING"].detail["seconds"]) == cli.QUICK.starts


def test_main_writes_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fake(bounds: object) -> list[Row]:
        return [Row("fake", "a figure", 2.0, "x", ">= 1", True), Row("fake", "info", 3.0, "s")]

    monkeypatch.setitem(cli.BENCHMARKS, "startup", fake)
    out = tmp_path / "figures.json"
    assert cli.main(["--only", "startup", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| fake | a figure | 2.000 x | >= 1 | met |" in printed
    assert '"figure": "a figure"' in out.read_text()


def test_main_exit_code_says_a_goal_was_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def missed(bounds: object) -> list[Row]:
        return [Row("fake", "slow", 0.1, "x", ">= 1", False)]

    monkeypatch.setitem(cli.BENCHMARKS, "startup", missed)
    assert cli.main(["--only", "startup"]) == 1


def test_main_refuses_zero_rounds() -> None:
    assert cli.main(["--rounds", "0"]) == 2


async def test_a_process_that_dies_before_serving_is_reported() -> None:
    crash = Spawned([sys.executable, "-c", "print('no serving line'); raise SystemExit(3)"], {})
    with pytest.raises(RuntimeError, match="exited early"):
        await crash.start()
    assert await crash.stop() == 3


async def test_proc_readings_of_a_live_process() -> None:
    echo = Spawned([sys.executable, "-m", "bench.service._echo"], replica_env())
    async with echo:
        assert echo.address.startswith("127.0.0.1:")
        assert rss_mb(echo.pid) > 1
        assert cpu_seconds(echo.pid) >= 0
    assert echo.last_json() == {"message": "serving", "address": echo.address}
