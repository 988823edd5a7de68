"""client.testing: the doubles the tests and the library's users share, tested on their own."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import client.testing
from client import Address, UserClient
from client.testing import FakeClock, FakeReplica, ManualResolver, eventually, fake_replicas
from meshdemo.v1 import user_pb2, user_pb2_grpc

pytestmark = pytest.mark.timeout(30)


async def test_a_sleep_wakes_exactly_when_the_clock_reaches_its_deadline() -> None:
    clock = FakeClock(10.0)
    sleeper = asyncio.create_task(clock.sleep(2.0))
    await clock.tick()
    assert clock.pending == 1 and clock.next_deadline == 12.0
    await clock.tick(1.999)
    assert not sleeper.done()
    await clock.tick(0.001)
    assert sleeper.done()
    assert (clock.sleeps, clock.woke_at, clock.pending) == ([2.0], [12.0], 0)
    assert clock.next_deadline is None


async def test_sleeps_wake_in_deadline_order_and_cancelled_ones_are_not_pending() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleep(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    late = asyncio.create_task(sleep("late", 3.0))
    early = asyncio.create_task(sleep("early", 1.0))
    gone = asyncio.create_task(sleep("gone", 2.0))
    await clock.tick()
    gone.cancel()
    await clock.tick()
    assert clock.pending == 2
    await clock.tick(5.0)
    await asyncio.gather(late, early)
    assert woke == ["early", "late"]
    assert clock.woke_at == [1.0, 3.0]  # each woke with the clock at its own deadline
    assert clock() == 5.0


async def test_auto_advance_moves_the_clock_by_each_sleep() -> None:
    clock = FakeClock(100.0, auto_advance=True)
    await clock.sleep(1.5)
    await clock.sleep(0.5)
    assert (clock(), clock.sleeps, clock.woke_at) == (102.0, [1.5, 0.5], [101.5, 102.0])


def test_time_never_runs_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1.0)


async def test_manual_resolver_publishes_full_sets_until_closed() -> None:
    resolver = ManualResolver("127.0.0.2:50051")
    updates = resolver.updates()
    assert await anext(updates) == {Address("127.0.0.2", 50051)}
    resolver.publish("127.0.0.3:1", Address("127.0.0.4", 2))
    assert await anext(updates) == {Address("127.0.0.3", 1), Address("127.0.0.4", 2)}
    resolver.resolve_now()
    assert resolver.resolve_now_calls == 1
    await resolver.close()
    with pytest.raises(StopAsyncIteration):
        await anext(updates)
    assert resolver.closed


async def test_a_fake_replica_answers_get_user_under_its_name_and_records_metadata() -> None:
    async with FakeReplica("127.0.0.2", name="a") as replica:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            reply = await stub.GetUser(
                user_pb2.GetUserRequest(id="u1"), metadata=(("x-test", "1"),), timeout=5
            )
            assert (reply.user.id, reply.user.name) == ("u1", "a")
            assert replica.calls == 1 and replica.metadata[0]["x-test"] == "1"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateUser(user_pb2.CreateUserRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_queued_failures_come_first_then_answers_resume() -> None:
    async with FakeReplica("127.0.0.2") as replica:
        replica.fail_next(grpc.StatusCode.UNAVAILABLE, count=2, message="going away")
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetUser(user_pb2.GetUserRequest(id="x"), timeout=5)
                assert (caught.value.code(), caught.value.details()) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "going away",
                )
            reply = await stub.GetUser(user_pb2.GetUserRequest(id="x"), timeout=5)
            assert reply.user.name == "127.0.0.2" and replica.calls == 3


async def test_a_delay_holds_the_answer_past_a_short_deadline() -> None:
    async with FakeReplica("127.0.0.2", delay=2.0) as replica:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetUser(user_pb2.GetUserRequest(id="x"), timeout=0.2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_health_is_served_only_when_asked_and_follows_set_serving() -> None:
    async with FakeReplica("127.0.0.2", health=True) as healthy, FakeReplica("127.0.0.3") as bare:
        async with grpc.aio.insecure_channel(healthy.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            assert (
                await stub.Check(check, timeout=5)
            ).status == health_pb2.HealthCheckResponse.SERVING
            await healthy.set_serving(False)
            status = (await stub.Check(check, timeout=5)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        async with grpc.aio.insecure_channel(bare.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(RuntimeError, match="no health service"):
            await bare.set_serving(True)


async def test_a_replica_is_started_once_and_has_no_address_before() -> None:
    replica = FakeReplica("127.0.0.2")
    with pytest.raises(RuntimeError, match="not started"):
        replica.address  # noqa: B018
    await replica.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            await replica.start()
    finally:
        await replica.stop()
    assert "stopped" in repr(replica)


async def test_the_client_balances_over_fake_replicas_found_by_a_manual_resolver() -> None:
    async with fake_replicas(["127.0.0.2", "127.0.0.3"]) as replicas:
        resolver = ManualResolver(*(r.address for r in replicas))
        async with UserClient("fake:///", resolver=resolver, tracing=False) as users:
            names = {(await users.get_user(f"u{i}", timeout=5)).name for i in range(40)}
        assert names == {"127.0.0.2", "127.0.0.3"}
        await eventually(lambda: resolver.closed)


async def test_eventually_fails_loudly_when_the_condition_never_holds() -> None:
    with pytest.raises(AssertionError, match=r"within 0\.05 s"):
        await eventually(lambda: False, within=0.05)


def test_the_dns_server_is_reached_through_the_module_and_unknown_names_are_not() -> None:
    from client._dns_server import DnsServer

    assert client.testing.DnsServer is DnsServer
    with pytest.raises(AttributeError, match="NoSuchThing"):
        client.testing.NoSuchThing  # noqa: B018
