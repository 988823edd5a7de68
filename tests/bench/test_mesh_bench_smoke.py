"""A quick run of the mesh benchmarks: figures present and sane, no wall-clock assertion."""

from __future__ import annotations

import math

import pytest

from bench.mesh import __main__ as cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_quick_run_of_every_mesh_benchmark() -> None:
    rows = await cli.run(list(cli.BENCHMARKS), cli.QUICK)
    by_figure = {row.figure: row for row in rows}
    assert {row.benchmark for row in rows} == {"mesh up", "mesh SIGKILL", "demo"}
    for figure in ("start to all 3 replicas in DNS", "kill to out of DNS",
                   "kill to back in DNS (SERVING)"):  # fmt: skip
        row = by_figure[figure]
        assert math.isfinite(row.value) and row.value > 0, row
        assert row.met is not None
    failed = by_figure["failed calls"]
    assert failed.value == 0, failed.detail
    assert failed.detail["calls"] > 0
    assert 0 <= by_figure["calls that needed a retry"].value <= 100
