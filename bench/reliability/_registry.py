"""Every scenario of the reliability table, by the name ``--only`` takes, in table order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.reliability._floods import idle_stream_flood, socket_flood
from bench.reliability._scenarios import (
    Outcome,
    all_replicas_killed,
    postgres_outage,
    rolling_restart,
    sigkill_under_load,
    sqlite_removed,
    stalled_replica,
)

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True)
class Scenario:
    """A named scenario: ``run(state_dir, rounds=...)`` returns its outcome."""

    name: str
    run: Callable[..., Awaitable[Outcome]]
    needs_postgres: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("sigkill", sigkill_under_load),
    Scenario("rolling-restart", rolling_restart),
    Scenario("stall", stalled_replica),
    Scenario("all-killed", all_replicas_killed),
    Scenario("postgres-outage", postgres_outage, needs_postgres=True),
    Scenario("sqlite-removed", sqlite_removed),
    Scenario("flood-streams", idle_stream_flood),
    Scenario("flood-sockets", socket_flood),
)
