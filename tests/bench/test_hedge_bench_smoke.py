"""Smoke test of the hedging scenarios: tiny bounds, consistent figures, nothing left paused.

No speed is asserted (the machine is shared): only that every side reports,
our sides report their hedges, and the throttled replica runs again afterwards.
"""

from __future__ import annotations

import pytest

from bench.client import Bounds, Cluster, healthy_hedges, slow_replica, throttled
from bench.client._clients import BASELINE, BASELINE_HEALTHY_ONLY, OURS
from bench.client._cluster import HOSTS
from bench.client.throttle import SIDES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TINY = Bounds(rounds=1, duration=0.6, rate=50.0, warmup_calls=12)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def test_the_throttled_and_healthy_scenarios_report_hedges() -> None:
    async with Cluster(seed_users=10) as cluster:
        result = await throttled(cluster, TINY)
        victim = cluster.replica(HOSTS[0])
        assert victim.pid is not None
        assert _state(victim.pid) != "T"  # resumed: never left stopped
        healthy = await healthy_hedges(cluster, TINY)
    assert set(result["rounds"]) == set(SIDES)
    for side in SIDES:
        (figures,) = result["rounds"][side]
        assert figures["calls"] == figures["ok"] + figures["failed"] > 0
        if side != BASELINE:
            assert 0 <= figures["hedges_won"] <= figures["hedges"]
            assert figures["hedge_share"] == round(figures["hedges"] / figures["calls"], 4)
        else:
            assert "hedges" not in figures
    assert result["median"]["ours_no_hedging"]["hedges"] == 0
    assert result["met"] == (result["ratio"] <= 0.2 and result["ratio_least_conn"] <= 0.2)
    assert {r["figure"] for r in result["rows"]} >= {
        "p99 latency (ms), defaults",
        "p99 latency (ms), least_conn",
        "hedges per call, defaults",
    }
    assert healthy["rows"][0]["figure"] == "hedges per call, defaults"
    assert healthy["met"] == (
        healthy["median"][OURS]["hedge_share"] <= 0.02
        and healthy["median"]["ours_least_conn"]["hedge_share"] <= 0.02
    )


async def test_the_slow_replica_scenario_reports_its_floor_from_the_healthy_replicas() -> None:
    async with Cluster(seed_users=10) as cluster:
        result = await slow_replica(cluster, TINY)
    assert set(result["rounds"]) == {*SIDES, BASELINE_HEALTHY_ONLY}
    (floor,) = result["rounds"][BASELINE_HEALTHY_ONLY]
    assert floor["calls"] == floor["ok"] > 0
    # The floor's client never dialled the slow replica; the baseline's did.
    assert floor["per_replica"].get(HOSTS[0], 0) == 0
    assert result["rounds"][BASELINE][0]["per_replica"].get(HOSTS[0], 0) > 0
    base = result["median"][BASELINE]["p99_ms"]
    assert result["ratio_floor"] == pytest.approx(floor["p99_ms"] / base)
    assert any(r["figure"].startswith("p99 latency (ms), the floor") for r in result["rows"])
    # The goal is judged on our sides only, never on the floor.
    assert result["met"] == (result["ratio"] <= 0.2 and result["ratio_least_conn"] <= 0.2)
