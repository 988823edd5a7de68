"""Smoke test of the client benchmark: the quickest scenario with tiny bounds gives sane figures.

No speed is asserted (the machine is shared): only that every figure is there
and consistent, and that both clients really spread calls over the replicas.
"""

from __future__ import annotations

import math

import pytest

from bench.client import Bounds, Cluster, throughput
from bench.client._clients import BASELINE, OURS, SIDES
from bench.client._cluster import HOSTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]

TINY = Bounds(rounds=1, duration=0.6, concurrency=4, max_calls=400, warmup_calls=12)


async def test_throughput_scenario_reports_sane_figures() -> None:
    async with Cluster(seed_users=10) as cluster:
        result = await throughput(cluster, TINY)
    assert set(result["rounds"]) == set(SIDES)
    for side in SIDES:
        (figures,) = result["rounds"][side]
        assert figures["calls"] == figures["ok"] + figures["failed"] > 0
        assert figures["failed"] == 0, figures["errors"]
        assert figures["calls"] <= TINY.max_calls
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        assert figures["rate"] > 0
        # Every replica served some calls, through either client; shares add up to 1.
        assert set(figures["per_replica"]) == set(HOSTS)
        assert all(n > 0 for n in figures["per_replica"].values()), figures["per_replica"]
        assert math.isclose(sum(figures["share"].values()), 1.0, abs_tol=0.01)
    assert result["ratio"] > 0
    (ours,), (baseline,) = result["rounds"][OURS], result["rounds"][BASELINE]
    assert result["ratio"] == pytest.approx(ours["rate"] / baseline["rate"])  # One round's own.
    assert result["met"] == (result["ratio"] >= 0.9)
    assert result["rows"][0]["figure"] == "GetUser calls/s"
