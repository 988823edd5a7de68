"""UserClient's hedging against real gRPC servers on loopback: winners, cancels, spans, stats.

The servers are small real grpc.aio servers (``tests.client.helpers.echo_server``)
with a servicer that can hold a call and notices when the client cancels it.
A deterministic picker (the first endpoint not yet used) sends the first copy
to the first address of the target, so the tests choose which replica is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client import (
    DEFAULT_HEDGING,
    HedgingPolicy,
    NotFoundError,
    PoolConfig,
    RetryBudget,
    UserClient,
)
from client._client import hedging_by_method
from client.testing import eventually
from meshdemo.v1 import user_pb2
from tests.client.helpers import EchoUsers, echo_server
from tests.client.test_client import FirstNotExcluded

pytestmark = pytest.mark.timeout(30)

FIXED = HedgingPolicy(delay=0.05)
#: Long enough that only a cancel ends it within a test's time.
HOLD = 20.0


@dataclass
class Holding(EchoUsers):
    """EchoUsers that can hold calls, count cancels, answer NOT_FOUND, and list users."""

    cancelled: int = 0
    not_found: bool = False
    created: int = 0
    listed: int = 0
    listing: list[str] = field(default_factory=lambda: ["u-1", "u-2", "u-3"])

    async def _hold(self) -> None:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        self.calls += 1
        if self.delay:
            await self._hold()
        if self.not_found:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such user")
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id, name=self.name))

    async def CreateUser(self, request: Any, context: Any) -> Any:
        self.created += 1
        if self.delay:
            await self._hold()
        return user_pb2.CreateUserResponse(user=user_pb2.User(id="new", name=self.name))

    async def ListUsers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.listed += 1
        if self.delay:
            await self._hold()
        for user_id in self.listing:
            user = user_pb2.User(id=user_id, name=self.name)
            yield user_pb2.ListUsersResponse(user=user, next_page_token=user_id)


def hedging_client(*addresses: str, **options: Any) -> UserClient:
    settings: dict[str, Any] = {
        "policy": FirstNotExcluded(),
        "tracing": False,
        "pool": PoolConfig(health_check=False),
        "hedging": {"GetUser": FIXED, "ListUsers": FIXED},
    }
    settings.update(options)
    return UserClient("static:///" + ",".join(addresses), **settings)


@contextlib.asynccontextmanager
async def pair(first: Holding, second: Holding, **options: Any) -> AsyncIterator[UserClient]:
    """``first`` on 127.0.0.2, ``second`` on 127.0.0.3, and a hedging client of both."""
    async with (
        echo_server("127.0.0.2", first) as a,
        echo_server("127.0.0.3", second) as b,
        hedging_client(a, b, **options) as client,
    ):
        yield client


async def test_a_hedge_to_another_replica_wins_and_the_server_sees_the_cancel() -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with pair(slow, quick) as client:
        user = await asyncio.wait_for(client.get_user("u-1"), 5)
        assert user.name == "quick"
        await eventually(lambda: slow.cancelled == 1)  # the loser's server saw the cancel
        stats = client.stats()
        assert (stats.hedges, stats.hedges_won) == (1, 1)
        assert stats.hedging["GetUser"].sent == stats.hedging["GetUser"].won == 1
        assert stats.hedging["GetUser"].delay == 0.05
        assert stats.retries == 0 and stats.failures == 0
        assert all(e.in_flight == 0 for e in stats.endpoints)  # every lease given back


async def test_a_quick_answer_sends_no_hedge() -> None:
    first, second = Holding("first"), Holding("second")
    async with pair(first, second, hedging={"GetUser": HedgingPolicy(delay=2.0)}) as client:
        for _ in range(5):
            assert (await client.get_user("u")).name == "first"
        assert second.calls == 0
        assert client.stats().hedges == 0


async def test_a_fatal_answer_ends_the_call_without_waiting_for_the_hedge() -> None:
    slow, missing = Holding("slow", delay=HOLD), Holding("missing", not_found=True)
    async with pair(slow, missing) as client:
        with pytest.raises(NotFoundError):
            await asyncio.wait_for(client.get_user("nobody"), 5)
        await eventually(lambda: slow.cancelled == 1)
        assert client.stats().hedges_won == 0
        assert client.stats().failures == 1


async def test_an_unreachable_first_replica_is_hedged_at_once() -> None:
    quick = Holding("quick")
    async with echo_server("127.0.0.3", quick) as q:
        from tests.client.test_client import closed_port

        dead = closed_port("127.0.0.2")
        slow_delay = HedgingPolicy(delay=HOLD)  # only a non-fatal failure can send it
        async with hedging_client(dead, q, hedging={"GetUser": slow_delay}) as client:
            user = await asyncio.wait_for(client.get_user("u"), 5)
            assert user.name == "quick"
            assert client.stats().hedges == 1


async def test_an_empty_budget_sends_no_hedge() -> None:
    slow, quick = Holding("slow", delay=0.3), Holding("quick")
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    async with pair(slow, quick, budget=budget) as client:
        assert (await client.get_user("u")).name == "slow"
        assert quick.calls == 0
        assert client.stats().hedges == 0


async def test_create_user_is_not_hedged_by_default() -> None:
    slow, other = Holding("slow", delay=0.3), Holding("other")
    async with pair(slow, other, hedging=None) as client:
        assert (await client.create_user("Ada", "ada@example.com", 36)).name == "slow"
        assert (slow.created, other.created) == (1, 0)
        assert "CreateUser" not in client.stats().hedging


async def test_create_user_with_a_request_id_may_be_hedged_when_asked() -> None:
    slow, other = Holding("slow", delay=HOLD), Holding("other")
    async with pair(slow, other, hedging={"CreateUser": FIXED}) as client:
        user = await asyncio.wait_for(client.create_user("Ada", "a@example.com", 3), 5)
        assert user.name == "other"
        assert client.stats().hedging["CreateUser"].won == 1


async def test_hedging_can_be_switched_off() -> None:
    slow, other = Holding("slow", delay=0.3), Holding("other")
    async with pair(slow, other, hedging=False) as client:
        assert (await client.get_user("u")).name == "slow"
        assert other.calls == 0
        assert client.stats().hedging == {}


def test_which_methods_are_hedged() -> None:
    assert hedging_by_method(None) == dict(DEFAULT_HEDGING)
    assert hedging_by_method(True) == dict(DEFAULT_HEDGING)
    assert set(DEFAULT_HEDGING) == {"GetUser", "ListUsers"}
    assert hedging_by_method(False) == {}
    assert hedging_by_method(FIXED) == {"GetUser": FIXED, "ListUsers": FIXED}
    assert hedging_by_method({"ListUsers": None}) == {"GetUser": DEFAULT_HEDGING["GetUser"]}
    assert set(hedging_by_method({"BatchCreateUsers": FIXED})) == {
        "GetUser",
        "ListUsers",
        "BatchCreateUsers",
    }


@pytest.mark.parametrize("method", ["Chat", "DeleteUser"])
def test_a_call_that_may_not_be_repeated_cannot_be_hedged(method: str) -> None:
    with pytest.raises(ValueError, match="cannot hedge"):
        UserClient("static:///127.0.0.2:1", hedging={method: FIXED})
    with pytest.raises(ValueError, match="HedgingPolicy"):
        UserClient("static:///127.0.0.2:1", hedging={"GetUser": 0.05})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="hedging must be"):
        UserClient("static:///127.0.0.2:1", hedging=0.05)  # type: ignore[arg-type]


async def test_the_first_response_of_a_listing_is_hedged() -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with pair(slow, quick) as client:
        listing = client.list_users()
        users = await asyncio.wait_for(_all(listing), 5)
        assert [(u.id, u.name) for u in users] == [
            ("u-1", "quick"),
            ("u-2", "quick"),
            ("u-3", "quick"),
        ]
        assert listing.next_page_token == "u-3"
        await eventually(lambda: slow.cancelled == 1)
        assert client.stats().hedging["ListUsers"].won == 1
        assert all(e.in_flight == 0 for e in client.stats().endpoints)


async def test_a_quick_listing_is_not_hedged() -> None:
    first, second = Holding("first"), Holding("second")
    async with pair(first, second, hedging={"ListUsers": HedgingPolicy(delay=2.0)}) as client:
        assert len(await _all(client.list_users())) == 3
        assert (first.listed, second.listed) == (1, 0)


async def _all(listing: AsyncIterator[user_pb2.User]) -> list[user_pb2.User]:
    return [user async for user in listing]


async def test_one_span_per_copy_and_the_loser_is_marked_cancelled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with pair(slow, quick, tracing=True, tracer_provider=provider) as client:
        await asyncio.wait_for(client.get_user("u-1"), 5)
    spans = exporter.get_finished_spans()
    copies = sorted(
        (x for x in spans if x.kind is SpanKind.CLIENT and x.name.endswith("/GetUser")),
        key=lambda x: str(x.attributes and x.attributes["meshdemo.hedge.number"]),
    )
    assert [c.attributes and c.attributes["meshdemo.hedge.number"] for c in copies] == [1, 2]
    loser, winner = copies
    assert loser.attributes and loser.attributes["meshdemo.hedge.cancelled"] is True
    assert loser.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert loser.status.status_code is StatusCode.ERROR
    assert loser.attributes["server.address"] == "127.0.0.2"
    assert winner.attributes and "meshdemo.hedge.cancelled" not in winner.attributes
    assert winner.status.status_code is not StatusCode.ERROR
    [logical] = [x for x in spans if x.name.endswith("GetUser logical")]
    assert [e.name for e in logical.events] == ["hedge"]
    assert all(
        c.parent and logical.context and c.parent.span_id == logical.context.span_id for c in copies
    )


async def test_each_hedge_is_traced_under_its_own_call_when_calls_share_the_timer(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Two calls in flight at once, both hedged: the client's one timer fires the second
    # call's hedge from a wake-up the first call's entry set. Its copy must still be a
    # child of its own logical span, not of the call that happened to set the wake-up.
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with pair(slow, quick, tracing=True, tracer_provider=provider) as client:
        first = asyncio.ensure_future(client.get_user("u-1"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(client.get_user("u-2"))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
    spans = exporter.get_finished_spans()
    logical = [x for x in spans if x.name.endswith("GetUser logical")]
    copies = [x for x in spans if x.kind is SpanKind.CLIENT and x.name.endswith("/GetUser")]
    assert len(logical) == 2 and len(copies) == 4
    for call in logical:
        assert call.context is not None
        mine = [c for c in copies if c.parent and c.parent.span_id == call.context.span_id]
        numbers = sorted(str(c.attributes["meshdemo.hedge.number"]) for c in mine if c.attributes)
        assert numbers == ["1", "2"], f"copies of {call.context.span_id:x}: {numbers}"


async def test_a_listings_losing_copy_span_is_marked_cancelled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with pair(slow, quick, tracing=True, tracer_provider=provider) as client:
        assert len(await asyncio.wait_for(_all(client.list_users()), 5)) == 3
    copies = [
        x
        for x in exporter.get_finished_spans()
        if x.kind is SpanKind.CLIENT and x.name.endswith("/ListUsers")
    ]
    by_number = {c.attributes["meshdemo.hedge.number"]: c for c in copies if c.attributes}
    assert set(by_number) == {1, 2}
    loser = by_number[1].attributes
    assert loser is not None and loser["meshdemo.hedge.cancelled"] is True
    winner = by_number[2].attributes
    assert winner is not None and "meshdemo.hedge.cancelled" not in winner


async def test_a_replica_outrun_by_hedges_again_and_again_is_ejected() -> None:
    slow, quick = Holding("slow", delay=HOLD), Holding("quick")
    async with (
        echo_server("127.0.0.2", slow) as s,
        echo_server("127.0.0.3", quick) as q,
        hedging_client(s, q) as client,
    ):
        for _ in range(3):  # EjectionConfig's default: three outlier failures in a row
            await asyncio.wait_for(client.get_user("u"), 5)
        [stalled] = [e for e in client.stats().endpoints if e.address == s]
        assert stalled.state == "EJECTED"
        # Outrun, not failed: no call failed, though the outruns ejected it.
        assert (stalled.outruns, stalled.failures) == (3, 0)
        assert [(e.outruns, e.failures) for e in client.stats().endpoints if e.address == q] == [
            (0, 0)
        ]
        await eventually(lambda: slow.cancelled == 3)
        calls = slow.calls
        await asyncio.wait_for(client.get_user("u"), 5)
        assert slow.calls == calls  # no longer picked while ejected
