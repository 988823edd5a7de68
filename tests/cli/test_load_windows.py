"""Per-tick figures of the load engine (rates, window latency, failures) on virtual time.

The engine runs on :class:`~tests.cli.virtual_time.VirtualTimeLoop`, so its
ticker and its workers share one virtual clock and the run is deterministic.
The client is an in-memory stand-in whose endpoints follow a script: one fails
for a while, latency rises for a while, one is removed and comes back as a new
endpoint object (its counters start from zero, as the real client's do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from client._client import ClientStats
from client._endpoint import EndpointStats
from client._errors import UnavailableError
from client._load import REMOVED, LoadConfig, LoadSnapshot, LoadSummary, run_load
from meshdemo.v1 import user_pb2
from tests.cli.virtual_time import run_virtual

A, B, C = "127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"


@dataclass
class _Counters:
    calls: int = 0
    failures: int = 0
    ejected: int = 0
    outruns: int = 0


@dataclass
class ScriptedClient:
    """Spreads gets over the endpoints present now, in turn; the script is by run time.

    * B fails every call in [1.0, 2.0) and is EJECTED (once) from 1.0 to 2.0.
    * Every call takes 50 ms in [2.0, 3.0), else 5 ms.
    * C is DRAINING in [3.0, 3.5), gone in [3.5, 4.0), then a new endpoint.
    * Every call on C is outrun by a hedge (an outrun, not a failure).
    """

    start: float
    counters: dict[str, _Counters] = field(
        default_factory=lambda: {a: _Counters() for a in (A, B, C)}
    )
    turn: int = 0
    retries: int = 0

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.start

    def _present(self) -> list[str]:
        t = self.now()
        if 3.5 <= t < 4.0:
            self.counters.pop(C, None)
        elif t >= 4.0 and C not in self.counters:
            self.counters[C] = _Counters()  # re-added: a fresh endpoint object
        return [a for a in (A, B, C) if a in self.counters]

    def _state(self, address: str) -> str:
        t = self.now()
        if address == B and 1.0 <= t < 2.0:
            return "EJECTED"
        if address == C and 3.0 <= t < 3.5:
            return "DRAINING"
        return "SERVING"

    async def get_user(self, user_id: str, *, timeout: float | None = None) -> user_pb2.User:
        usable = [a for a in self._present() if self._state(a) != "DRAINING"]
        address = usable[self.turn % len(usable)]
        self.turn += 1
        counters = self.counters[address]
        counters.calls += 1
        if address == C:
            counters.outruns += 1
        started = self.now()
        await asyncio.sleep(0.05 if 2.0 <= started < 3.0 else 0.005)
        if address == B and 1.0 <= started < 2.0:
            counters.failures += 1
            self.retries += 1
            raise UnavailableError("B is down")
        return user_pb2.User(id=user_id)

    async def batch_create_users(
        self, users: Iterable[Any], *, timeout: float | None = None
    ) -> Any:
        raise AssertionError("no seeding in these runs")

    def stats(self) -> ClientStats:
        if self.now() >= 1.0 and B in self.counters:
            self.counters[B].ejected = 1
        present = self._present()
        endpoints = tuple(
            EndpointStats(a, self._state(a), 1, 0, c.calls, c.failures, c.ejected, c.outruns)
            for a, c in ((a, self.counters[a]) for a in present)
        )
        return ClientStats(endpoints=endpoints, calls=0, retries=self.retries, failures=0)


def _run(**overrides: Any) -> tuple[ScriptedClient, list[LoadSnapshot], LoadSummary]:
    config = LoadConfig(
        **{
            "duration": 5.0,
            "rps": 120.0,
            "concurrency": 16,
            "tick_interval": 0.5,
            "mix": (("get", 1),),
            "seed": 7,
            "seed_users": 0,
            **overrides,
        }
    )
    snapshots: list[LoadSnapshot] = []

    async def main() -> tuple[ScriptedClient, LoadSummary]:
        loop = asyncio.get_running_loop()
        client = ScriptedClient(start=loop.time())
        summary = await run_load(client, config, snapshots.append, clock=loop.time)  # type: ignore[arg-type]
        return client, summary

    client, summary = run_virtual(main)
    return client, snapshots, summary


@pytest.fixture(scope="module")
def scripted() -> tuple[ScriptedClient, list[LoadSnapshot], LoadSummary]:
    return _run()


def _at(snapshots: list[LoadSnapshot], elapsed: float) -> LoadSnapshot:
    return next(s for s in snapshots if s.elapsed == pytest.approx(elapsed, abs=1e-6))


def _row(snapshot: LoadSnapshot, address: str) -> Any:
    return next(r for r in snapshot.endpoints if r.address == address)


def test_one_snapshot_per_tick_and_a_final_one(scripted: Any) -> None:
    _, snapshots, summary = scripted
    ticks = [round(s.elapsed, 6) for s in snapshots]
    assert ticks[:-1] == [0.5 * n for n in range(1, 10)]
    # The last call was due at 599/120 s and took 5 ms: the run ended before 5.0 s.
    assert snapshots[-1].elapsed == pytest.approx(599 / 120 + 0.005)
    assert snapshots[-1].calls == summary.calls == 600  # 120/s for 5 s


def test_rates_per_endpoint_are_per_tick_not_cumulative(scripted: Any) -> None:
    _, snapshots, _ = scripted
    first = _at(snapshots, 0.5)
    assert first.rps == pytest.approx(120, abs=2)
    for address in (A, B, C):
        assert _row(first, address).rate == pytest.approx(40, abs=2)  # 60 calls / 3 / 0.5 s
    # While C drains, A and B share its traffic: 60 /s each.
    draining = _at(snapshots, 3.5)
    assert _row(draining, C).state == "DRAINING"
    assert _row(draining, C).rate == 0.0
    assert _row(draining, A).rate == pytest.approx(60, abs=2)
    assert _row(draining, A).share < 0.5  # the share stays cumulative


def test_a_final_snapshot_soon_after_a_tick_takes_its_rates_over_a_tick_more() -> None:
    # The run ends 13 ms after its last tick, with two calls in that tail: a rate over
    # it alone would read 150/s for a steady 120/s (and 0/s for a tail of none).
    _, snapshots, summary = _run(duration=4.51)
    final, tick = snapshots[-1], snapshots[-2]
    assert final.elapsed - tick.elapsed < 0.02
    assert final.rps == pytest.approx(120, abs=3)
    assert sum(r.rate for r in final.endpoints) == pytest.approx(120, abs=3)
    # Its window counts are still its own: the windows add up to the run.
    assert final.window_latency_ms.max <= 5.1
    assert sum(s.window_failed for s in snapshots) == summary.failed
    assert sum(s.window_retries for s in snapshots) == summary.retries


def test_window_failures_and_retries_cover_only_the_failing_second(scripted: Any) -> None:
    _, snapshots, summary = scripted
    windows = {round(s.elapsed, 1): s.window_failed for s in snapshots}
    # B takes a third of 60 calls per tick; calls started in [1, 2) fail.
    assert windows[1.5] == pytest.approx(20, abs=1)
    assert windows[2.0] == pytest.approx(20, abs=1)
    assert all(windows[t] == 0 for t in (0.5, 1.0, 3.0, 4.0, 5.0)), windows
    assert sum(s.window_failed for s in snapshots) == summary.failed == 40
    assert sum(s.window_retries for s in snapshots) == summary.retries == 40
    assert _at(snapshots, 2.0).failed == 40  # cumulative


def test_window_latency_follows_the_slow_second_and_recovers(scripted: Any) -> None:
    _, snapshots, _ = scripted
    slow, tail, after = _at(snapshots, 2.5), _at(snapshots, 3.5), _at(snapshots, 4.0)
    assert slow.window_latency_ms.p50 == pytest.approx(50, rel=0.02)
    # Calls that started slow before 3.0 s finish in the next window: its tail.
    assert tail.window_latency_ms.p50 == pytest.approx(5, rel=0.02)
    assert tail.window_latency_ms.p99 == pytest.approx(50, rel=0.02)
    assert after.window_latency_ms.p99 == pytest.approx(5, rel=0.02)
    assert after.latency_ms.p99 == pytest.approx(50, rel=0.02)  # cumulative remembers


def test_ejections_and_failures_per_endpoint(scripted: Any) -> None:
    _, snapshots, summary = scripted
    assert _row(_at(snapshots, 0.5), B).ejections == 0
    assert _row(_at(snapshots, 1.5), B).ejections == 1
    assert _row(_at(snapshots, 1.5), B).state == "EJECTED"
    assert summary.per_endpoint[B].failures == 40
    assert summary.per_endpoint[B].ejections == 1
    assert summary.per_endpoint[A].failures == 0


def test_an_endpoint_replaced_by_the_client_keeps_its_counts(scripted: Any) -> None:
    client, snapshots, summary = scripted
    assert C not in {r.address for r in _at(snapshots, 4.0).endpoints}  # gone for a while
    back = _at(snapshots, 4.5)
    assert _row(back, C).rate == pytest.approx(40, abs=2)
    before = _row(_at(snapshots, 3.5), C).calls
    assert _row(back, C).calls >= before + 15
    # The run's calls are all accounted for, across both C objects.
    assert sum(r.calls for r in summary.per_endpoint.values()) == summary.calls
    assert sum(r.share for r in summary.per_endpoint.values()) == pytest.approx(1.0)
    assert summary.per_endpoint[C].calls > client.counters[C].calls
    # Outruns too, and they are not failures.
    assert summary.per_endpoint[C].outruns == summary.per_endpoint[C].calls
    assert summary.per_endpoint[C].failures == 0
    assert summary.as_dict()["per_endpoint"][C]["outruns"] == summary.per_endpoint[C].outruns
    assert summary.per_endpoint[A].outruns == 0


def test_an_endpoint_gone_at_the_end_is_reported_removed() -> None:
    _, snapshots, summary = _run(duration=3.75)
    assert summary.per_endpoint[C].state == REMOVED
    assert summary.as_dict()["per_endpoint"][C]["final_state"] == REMOVED
    assert summary.per_endpoint[C].calls > 0
    assert C not in {r.address for r in snapshots[-1].endpoints}


def test_stop_ends_the_run_early_with_a_partial_summary() -> None:
    stop = asyncio.Event()
    snapshots: list[LoadSnapshot] = []

    async def main() -> LoadSummary:
        loop = asyncio.get_running_loop()
        client = ScriptedClient(start=loop.time())
        loop.call_later(2.25, stop.set)
        config = LoadConfig(
            duration=10.0, rps=100, concurrency=16, mix=(("get", 1),), seed=1, seed_users=0
        )
        return await run_load(client, config, snapshots.append, clock=loop.time, stop=stop)  # type: ignore[arg-type]

    summary = run_virtual(main)
    assert summary.interrupted
    assert summary.duration == pytest.approx(2.25, abs=0.01)
    assert 220 <= summary.calls <= 226  # what finished; the running ones are not counted
    assert summary.calls == summary.ok + summary.failed
    assert snapshots[-1].remaining == 0.0
    assert summary.as_dict()["interrupted"] is True


def test_a_stop_after_the_end_does_not_mark_the_run_interrupted() -> None:
    async def main() -> LoadSummary:
        loop = asyncio.get_running_loop()
        client = ScriptedClient(start=loop.time())
        config = LoadConfig(duration=0.5, rps=100, mix=(("get", 1),), seed=1, seed_users=0)
        return await run_load(client, config, clock=loop.time, stop=asyncio.Event())  # type: ignore[arg-type]

    summary = run_virtual(main)
    assert not summary.interrupted
    assert summary.calls == 50
