"""The load engine on its own: pacing, bounds and bookkeeping, on a virtual clock.

The client here is an in-memory stand-in for UserClient (no grpc involved) whose
calls take virtual time; the engine's clock and sleep are the same virtual
clock. With one worker and no ticker, the run is fully deterministic. Runs
against real replicas are in test_commands.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from client._client import ClientStats
from client._endpoint import EndpointStats
from client._errors import NotFoundError, UnavailableError
from client._load import LoadConfig, LoadSnapshot, error_code, parse_mix, run_load
from client.testing import FakeClock
from meshdemo.v1 import user_pb2


def virtual_clock() -> FakeClock:
    """Monotonic time that moves only when someone sleeps (and by exactly that much)."""
    return FakeClock(100.0, auto_advance=True)


@dataclass
class FakeEndpoint:
    address: str
    total_calls: int = 0
    failures: int = 0


@dataclass
class FakeClient:
    """Answers every method after ``latency`` virtual seconds, alternating two endpoints."""

    clock: FakeClock
    latency: float = 0.0
    fail_with: Exception | None = None
    endpoints: list[FakeEndpoint] = field(
        default_factory=lambda: [FakeEndpoint("127.0.0.2:1"), FakeEndpoint("127.0.0.3:1")]
    )
    users: dict[str, user_pb2.User] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    retries: int = 0

    async def _serve(self, method: str) -> None:
        self.calls.append(method)
        endpoint = self.endpoints[len(self.calls) % 2]
        endpoint.total_calls += 1
        await self.clock.sleep(self.latency)
        if self.fail_with is not None:
            endpoint.failures += 1
            raise self.fail_with

    def _store(self, name: str, email: str, age: int) -> user_pb2.User:
        user = user_pb2.User(id=f"u{len(self.users)}", name=name, email=email, age=age)
        self.users[user.id] = user
        return user

    async def get_user(
        self,
        user_id: str,
        *,
        timeout: float | None = None,
    ) -> user_pb2.User:
        await self._serve("get")
        if user_id not in self.users:
            raise NotFoundError(f"user {user_id!r} not found")
        return self.users[user_id]

    async def create_user(
        self,
        name: str,
        email: str,
        age: int,
        roles: Sequence[str] = ("user",),
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User:
        await self._serve("create")
        return self._store(name, email, age)

    async def _list(self, page_size: int) -> AsyncIterator[user_pb2.User]:
        await self._serve("list")
        for user in list(self.users.values())[:page_size]:
            yield user

    def list_users(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AsyncIterator[user_pb2.User]:
        return self._list(page_size)

    async def batch_create_users(
        self,
        users: Iterable[Any],
        *,
        timeout: float | None = None,
    ) -> list[user_pb2.User]:
        specs = list(users)
        await self._serve("batch")
        return [self._store(s.name, s.email, s.age) for s in specs]

    def chat(self, *, user_id: str = "") -> Any:
        raise NotImplementedError

    def stats(self) -> ClientStats:
        endpoints = tuple(
            EndpointStats(e.address, "SERVING", 1, 0, e.total_calls, e.failures, 0)
            for e in self.endpoints
        )
        return ClientStats(endpoints=endpoints, calls=len(self.calls), retries=self.retries,
                           failures=0)  # fmt: skip


async def _run(client: FakeClient, **config: Any) -> Any:
    settings: dict[str, Any] = {
        "concurrency": 1,
        "mix": (("get", 1),),
        "seed": 3,
        "seed_users": 1,
        **config,
    }
    return await run_load(
        client, LoadConfig(**settings), clock=client.clock, sleep=client.clock.sleep
    )


@pytest.fixture
def clock() -> FakeClock:
    return virtual_clock()


async def test_open_loop_offers_exactly_the_rate(clock: FakeClock) -> None:
    client = FakeClient(clock)
    summary = await _run(client, duration=1.0, rps=10)
    assert (summary.calls, summary.ok, summary.failed, summary.late) == (10, 10, 0, 0)
    assert clock.now == pytest.approx(100.9)  # the last slot was due at 0.9 s


async def test_open_loop_counts_late_calls_when_the_server_is_slow(clock: FakeClock) -> None:
    client = FakeClient(clock, latency=0.25)
    summary = await _run(client, duration=1.0, rps=10)
    # Slots were due every 0.1 s but each call took 0.25 s: after the first,
    # every call started late, and only four could start within the second.
    assert (summary.calls, summary.late) == (4, 3)
    assert summary.latency_ms.p50 == pytest.approx(250, rel=0.01)


async def test_closed_loop_runs_back_to_back_until_the_duration(clock: FakeClock) -> None:
    client = FakeClient(clock, latency=0.25)
    summary = await _run(client, duration=1.0)
    assert (summary.calls, summary.late) == (4, 0)
    assert summary.duration == pytest.approx(1.0)
    assert summary.rps == pytest.approx(4.0)


async def test_max_calls_caps_the_run(clock: FakeClock) -> None:
    client = FakeClient(clock)
    summary = await _run(client, duration=10.0, max_calls=7, concurrency=3)
    assert summary.calls == 7
    assert len(client.calls) == 1 + 7


async def test_failures_are_counted_by_code_and_add_up(clock: FakeClock) -> None:
    client = FakeClient(clock, latency=0.1, fail_with=UnavailableError("down"))
    summary = await _run(client, duration=1.0, rps=5, seed_users=0)
    assert summary.ok == 0
    assert summary.failed == summary.calls == 5
    assert summary.errors_by_code == {"UNAVAILABLE": 5}
    assert sum(row.failures for row in summary.per_endpoint.values()) == 5


async def test_get_without_known_ids_counts_not_found(clock: FakeClock) -> None:
    summary = await _run(FakeClient(clock), duration=1.0, rps=4, seed_users=0)
    assert summary.errors_by_code == {"NOT_FOUND": 4}


async def test_seeding_lets_gets_find_users_and_is_left_out_of_the_counts(
    clock: FakeClock,
) -> None:
    client = FakeClient(clock)
    summary = await _run(client, duration=1.0, rps=10, seed_users=1200)
    assert summary.seeded == 1200
    assert len(client.users) == 1200
    assert client.calls[:3] == ["batch"] * 3  # 500 + 500 + 200
    assert (summary.calls, summary.ok) == (10, 10)
    assert sum(row.calls for row in summary.per_endpoint.values()) == 10


async def test_mix_spreads_operations_by_weight(clock: FakeClock) -> None:
    client = FakeClient(clock)
    mix = (("get", 0), ("create", 1), ("list", 1), ("batch", 1))
    summary = await _run(client, duration=1.0, rps=300, mix=mix, batch_size=2)
    counted = {op: client.calls.count(op) for op in ("get", "create", "list", "batch")}
    assert counted["get"] == 0
    assert all(60 <= counted[op] <= 140 for op in ("create", "list", "batch")), counted
    assert summary.calls == 300


async def test_summary_shares_add_up_to_one(clock: FakeClock) -> None:
    client = FakeClient(clock)
    client.retries = 5  # retries before the run do not count
    summary = await _run(client, duration=1.0, rps=20)
    document = summary.as_dict()
    assert sum(e["share"] for e in document["per_endpoint"].values()) == pytest.approx(1.0)
    assert {e["calls"] for e in document["per_endpoint"].values()} == {10}
    assert document["retries"] == 0
    assert document["config"]["mix"] == {"get": 1}
    assert set(document["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}


async def test_on_tick_gets_snapshots_and_a_final_one() -> None:
    # Real time here: the ticker and the workers share the loop.
    client = FakeClient(virtual_clock())
    snapshots: list[LoadSnapshot] = []
    config = LoadConfig(
        duration=0.3, rps=50, concurrency=2, tick_interval=0.05, mix=(("get", 1),), seed_users=1
    )
    summary = await run_load(client, config, snapshots.append)
    assert len(snapshots) >= 3
    final = snapshots[-1]
    assert final.calls == summary.calls == final.ok
    assert final.remaining == 0.0
    assert [row.address for row in final.endpoints] == ["127.0.0.2:1", "127.0.0.3:1"]
    assert all(a.calls <= b.calls for a, b in itertools.pairwise(snapshots))


async def test_stuck_calls_are_cancelled_after_the_drain_timeout() -> None:
    class Stuck(FakeClient):
        async def get_user(
            self,
            user_id: str,
            *,
            timeout: float | None = None,
        ) -> user_pb2.User:
            await asyncio.sleep(30)
            raise AssertionError("unreachable")

    config = LoadConfig(duration=0.1, concurrency=2, mix=(("get", 1),), drain_timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    summary = await run_load(Stuck(virtual_clock()), config)
    assert loop.time() - started < 2.0
    assert summary.calls == 0  # cancelled, not counted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("get=80,create=10,list=10", (("get", 80), ("create", 10), ("list", 10))),
        (" chat=1 , batch=0 ", (("chat", 1), ("batch", 0))),
    ],
)
def test_parse_mix(text: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_mix(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("get", "bad mix entry"),
        ("delete=1", "bad mix entry"),
        ("get=1,get=2", "twice"),
        ("get=-1", "non-negative integer"),
        ("get=x", "non-negative integer"),
        ("get=0,list=0", "positive weight"),
    ],
)
def test_parse_mix_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("duration", 0),
        ("rps", -1),
        ("concurrency", 0),
        ("max_calls", 0),
        ("seed_users", -1),
        ("call_timeout", 0),
        ("tick_interval", 0),
        ("late_after", -1),
        ("drain_timeout", -1),
        ("list_page_size", 0),
        ("batch_size", 1001),
        ("chat_messages", 0),
        ("mix", (("nope", 1),)),
    ],
)
def test_config_validation(field_name: str, value: object) -> None:
    settings: dict[str, Any] = {"duration": 1.0, field_name: value}
    with pytest.raises(
        ValueError, match=field_name.split("_")[0] if field_name != "mix" else "unknown"
    ):
        LoadConfig(**settings)


def test_error_code_classifies_every_failure() -> None:
    empty = grpc.aio.Metadata()
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, empty, empty, "x", None)
    assert error_code(NotFoundError("x")) == "NOT_FOUND"
    assert error_code(rpc) == "RESOURCE_EXHAUSTED"
    assert error_code(TimeoutError()) == "DEADLINE_EXCEEDED"
    assert error_code(ValueError()) == "INVALID_ARGUMENT"
    assert error_code(KeyError()) == "UNKNOWN"


async def test_a_run_without_a_seed_draws_one_and_records_it(clock: FakeClock) -> None:
    mix = (("get", 1), ("create", 1), ("list", 1))
    first_client = FakeClient(clock)
    first = await _run(first_client, duration=1.0, rps=50, mix=mix, seed=None)
    assert isinstance(first.seed, int)
    assert first.config.seed == first.seed == first.as_dict()["seed"]
    # The recorded seed repeats the run's choices exactly.
    again_client = FakeClient(virtual_clock())
    again = await _run(again_client, duration=1.0, rps=50, mix=mix, seed=first.seed)
    assert again.seed == first.seed
    assert again_client.calls == first_client.calls
    other = await _run(FakeClient(virtual_clock()), duration=1.0, rps=50, mix=mix, seed=None)
    assert other.seed != first.seed  # drawn afresh (a 1 in 2**32 chance to fail)


async def test_per_operation_counts_and_latency(clock: FakeClock) -> None:
    client = FakeClient(clock, latency=0.01)
    mix = (("get", 2), ("create", 1), ("batch", 0))
    summary = await _run(client, duration=2.0, rps=60, mix=mix, seed_users=0)
    ops = summary.per_operation
    assert set(ops) == {"get", "create"}  # weight 0 never runs
    assert ops["get"].calls == client.calls.count("get")
    assert ops["create"].calls == client.calls.count("create")
    assert ops["get"].calls + ops["create"].calls == summary.calls
    # With no user known, every get is NOT_FOUND until a create succeeds.
    assert ops["get"].failed + ops["create"].failed == summary.failed
    assert ops["create"].failed == 0 and ops["create"].ok == ops["create"].calls
    assert ops["create"].latency_ms.p50 == pytest.approx(10, rel=0.02)
    document = summary.as_dict()["per_operation"]
    assert document["get"]["calls"] == ops["get"].calls
    assert set(document["get"]["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}


async def test_summary_keeps_the_old_keys_and_adds_the_new_ones(clock: FakeClock) -> None:
    document = (await _run(FakeClient(clock), duration=0.5, rps=10)).as_dict()
    old = {"calls", "ok", "failed", "errors_by_code", "retries", "late", "seeded", "rps",
           "latency_ms", "per_endpoint", "policy", "duration", "config"}  # fmt: skip
    assert old | {"seed", "per_operation", "interrupted", "hedges", "hedges_won"} == set(document)
    row = document["per_endpoint"]["127.0.0.2:1"]
    assert set(row) == {"calls", "share", "failures", "ejections", "outruns", "final_state"}
    assert row["final_state"] == "SERVING"
