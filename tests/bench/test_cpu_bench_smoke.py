"""Smoke test of the CPU-per-call scenario: tiny bounds, every level and side reports.

No speed is asserted (the machine is shared): only that the figures are there
and the verdict follows from them.
"""

from __future__ import annotations

import pytest

from bench.client import Bounds, Cluster, cpu_per_call
from bench.client._clients import BASELINE, OURS, OURS_NO_HEDGING
from bench.client.cpu import CPU_GOAL, RATE_GOAL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TINY = Bounds(rounds=1, duration=0.5, warmup_calls=10)


async def test_each_level_reports_cpu_and_rate_for_every_side() -> None:
    async with Cluster(seed_users=10) as cluster:
        result = await cpu_per_call(cluster, TINY, levels=(1, 4))
    assert set(result["levels"]) == {1, 4}
    verdicts = []
    for level in (1, 4):
        figures = result["levels"][level]
        for side in (OURS, OURS_NO_HEDGING, BASELINE):
            assert figures["median"][side]["cpu_us_per_call"] > 0, (level, side)
            assert figures["median"][side]["rate"] > 0, (level, side)
        hedged = figures["median"][OURS]
        assert 0 <= hedged["hedges_won"] <= hedged["hedges"]
        assert 0 <= hedged["hedge_share"] <= 1
        for side in (OURS, OURS_NO_HEDGING, BASELINE):
            assert len(figures["rounds"][side]) == TINY.rounds, (level, side)
        for side in (OURS, OURS_NO_HEDGING):
            ratios = figures[side]
            own = figures["rounds"][side][0]["cpu_us_per_call"]
            base = figures["rounds"][BASELINE][0]["cpu_us_per_call"]
            assert ratios["cpu_ratio"] == pytest.approx(own / base)  # One round: its own ratio.
            # ... and an interval of that ratio alone, which one round cannot vouch for.
            assert ratios["cpu_ratio_interval"] == [ratios["cpu_ratio"]] * 2
            assert ratios["cpu_ratio_interval_coverage"] == 0
            ok = ratios["cpu_ratio"] <= CPU_GOAL and ratios["rate_ratio"] >= RATE_GOAL
            assert ratios["met"] is ok
            verdicts.append(ok)
    assert result["met"] is all(verdicts)
    # Per level: our two sides x (CPU, rate), and the defaults' hedges.
    assert len(result["rows"]) == 2 * (2 * 2 + 1)
