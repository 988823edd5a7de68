"""Store faults on the local mesh, under load: PostgreSQL stopped and restarted, the SQLite file
removed and put back. Each repeated a few rounds on one mesh (see bench.reliability._scenarios).

What must hold: calls during the outage fail fast with UNAVAILABLE (never a
pool timeout's DEADLINE_EXCEEDED), every replica goes NOT_SERVING (the DNS
name empties), the replicas recover by themselves (no restart), no write is
acknowledged while the store cannot keep it, none acknowledged is lost, none
is stored twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reliability._scenarios import RECOVERY_LIMIT_S, Outcome, postgres_outage, sqlite_removed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

#: A failed call is fast when it takes well under the client's default deadline.
FAST_FAILURE_S = 2.0


def _assert_survived(outcome: Outcome, rounds: int) -> None:
    assert outcome.rounds == rounds
    assert outcome.problems == []
    assert (outcome.lost, outcome.duplicates) == (0, 0)
    assert outcome.acknowledged_during_fault == 0
    assert set(outcome.failures) <= {"UNAVAILABLE"}, outcome.failures
    assert outcome.slowest_failure_s < FAST_FAILURE_S
    assert outcome.restarts == 0
    assert len(outcome.recovery_s) == rounds
    assert max(outcome.recovery_s) < RECOVERY_LIMIT_S
    assert outcome.calls > rounds * 100


@pytest.mark.postgres
async def test_postgres_stopped_and_restarted_under_load(tmp_path: Path) -> None:
    from service.testing_postgres import why_no_local_postgres

    if reason := why_no_local_postgres():
        pytest.skip(reason)
    outcome = await postgres_outage(tmp_path / "mesh", rounds=2, outage_s=2.0)
    _assert_survived(outcome, 2)


async def test_the_sqlite_file_removed_and_put_back_under_load(tmp_path: Path) -> None:
    outcome = await sqlite_removed(tmp_path / "mesh", rounds=2, outage_s=1.5)
    _assert_survived(outcome, 2)
