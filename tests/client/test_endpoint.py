"""Endpoint: the channel pool, in-flight accounting, health watching, ejection, draining."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from client import EjectionConfig, Endpoint, EndpointDrainingError, EndpointState, PoolConfig
from client._interceptors import auth_interceptors
from client.testing import FakeClock, FakeReplica, eventually
from meshdemo.v1 import user_pb2
from service.testing import InProcessServer, admin_token, serve
from tests.client.helpers import address


def free_port(host: str) -> int:
    """A port nothing listens on now (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    async with serve("127.0.0.2") as running:
        yield running


def make_endpoint(hostport: str, clock: FakeClock | None = None, **pool: object) -> Endpoint:
    settings: dict[str, object] = {"health_check": False, **pool}
    return Endpoint(
        address(hostport),
        pool=PoolConfig(**settings),  # type: ignore[arg-type]
        ejection=EjectionConfig(consecutive_failures=3, base_ejection_time=1.0),
        interceptors=auth_interceptors(admin_token),
        clock=clock or FakeClock(),
    )


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"min_channels": 0},
        {"min_channels": 3, "max_channels": 2},
        {"max_concurrent_per_channel": 0},
        {"idle_timeout": 0},
        {"keepalive_time": 5},
        {"keepalive_timeout": 0},
        {"drain_grace": -1},
        {"health_backoff_initial": 0},
        {"health_backoff_initial": 2, "health_backoff_max": 1},
    ],
)
def test_pool_config_refuses_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
        PoolConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"consecutive_failures": 0},
        {"base_ejection_time": 0},
        {"base_ejection_time": 2, "max_ejection_time": 1},
    ],
)
def test_ejection_config_refuses_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        EjectionConfig(**bad)  # type: ignore[arg-type]


def test_ejection_time_grows_linearly_and_is_capped() -> None:
    config = EjectionConfig(base_ejection_time=1.0, max_ejection_time=2.5)
    assert [config.ejection_time(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 2.5, 2.5]


def test_channel_options_match_the_server_keepalive_policy() -> None:
    options = dict(PoolConfig().channel_options())
    assert options["grpc.keepalive_time_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.use_local_subchannel_pool"] == 1
    assert options["grpc.enable_retries"] == 0


# --- the pool ---------------------------------------------------------------------------------


async def test_channels_open_lazily(server: InProcessServer) -> None:
    endpoint = make_endpoint(server.address)
    assert endpoint.channel_count == 0
    async with endpoint.lease():
        assert endpoint.channel_count == 1
    await endpoint.close()


async def test_pool_grows_past_the_threshold_and_shrinks_when_idle(
    server: InProcessServer,
) -> None:
    clock = FakeClock()
    endpoint = make_endpoint(
        server.address, clock, max_concurrent_per_channel=2, max_channels=3, idle_timeout=5.0
    )
    async with contextlib.AsyncExitStack() as stack:
        leases = []
        counts = []
        for _ in range(7):
            lease = await stack.enter_async_context(endpoint.lease())
            leases.append(lease)
            counts.append(endpoint.channel_count)
        # A third channel opens once two carry 2 each; the cap holds at 3.
        assert counts == [1, 1, 2, 2, 3, 3, 3]
        assert endpoint.in_flight == 7
        assert len({id(lease.channel) for lease in leases}) == 3
        # Every channel is a real, working channel to the replica.
        replies = await asyncio.gather(
            *(lease.stub.GetUser(user_pb2.GetUserRequest(id="u-x"), timeout=5) for lease in leases),
            return_exceptions=True,
        )
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.NOT_FOUND
            for r in replies
        )
    assert endpoint.in_flight == 0
    assert endpoint.channel_count == 3  # Idle, but not for long enough yet.
    clock.advance(4.0)
    await endpoint.prune()
    assert endpoint.channel_count == 3
    clock.advance(1.5)
    await endpoint.prune()
    assert endpoint.channel_count == 1  # Back to min_channels.
    await endpoint.close()


async def test_in_flight_is_released_when_the_block_fails(server: InProcessServer) -> None:
    endpoint = make_endpoint(server.address)

    async def failing_call() -> None:
        async with endpoint.lease() as lease:
            assert endpoint.in_flight == 1
            await lease.stub.GetUser(user_pb2.GetUserRequest(id="nobody"), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError):
        await failing_call()
    assert endpoint.in_flight == 0
    assert endpoint.total_calls == 1
    await endpoint.close()


async def test_repr_shows_state_and_counts(server: InProcessServer) -> None:
    endpoint = make_endpoint(server.address)
    endpoint.start()  # No health watch: READY.
    async with endpoint.lease():
        text = repr(endpoint)
    assert text == f"<Endpoint {server.address} READY channels=1 in_flight=1 calls=1 failures=0>"
    endpoint.record_outcome(grpc.StatusCode.NOT_FOUND)
    assert repr(endpoint).endswith("channels=1 in_flight=0 calls=1 failures=1>")
    await endpoint.close()


# --- ejection ---------------------------------------------------------------------------------


def test_consecutive_failures_eject_with_a_growing_time() -> None:
    clock = FakeClock()
    endpoint = make_endpoint("127.0.0.2:1", clock)
    for _ in range(2):
        endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    assert endpoint.is_available()
    endpoint.record_outcome(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert endpoint.state is EndpointState.EJECTED
    assert not endpoint.is_available()
    clock.advance(0.99)
    assert endpoint.is_ejected()
    clock.advance(0.02)
    assert endpoint.is_available()  # Re-admitted after 1 s.
    for _ in range(3):
        endpoint.record_outcome(None)  # Connection failures count too.
    clock.advance(1.5)
    assert endpoint.is_ejected()  # The second ejection lasts 2 s.
    clock.advance(0.51)
    assert endpoint.is_available()
    assert endpoint.times_ejected == 2
    assert endpoint.stats().times_ejected == 2


@pytest.mark.parametrize("ending", ["success", "answer", "not-outlier"])
def test_success_and_answers_reset_the_failure_streak(ending: str) -> None:
    endpoint = make_endpoint("127.0.0.2:1")
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    if ending == "success":
        endpoint.record_outcome(grpc.StatusCode.OK)
    elif ending == "answer":
        endpoint.record_outcome(grpc.StatusCode.NOT_FOUND)
    else:
        endpoint.record_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, outlier=False)
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    assert endpoint.is_available()
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    assert endpoint.is_ejected()  # The streak counted from the reset on.


def test_failures_while_ejected_do_not_lengthen_the_ejection() -> None:
    clock = FakeClock()
    endpoint = make_endpoint("127.0.0.2:1", clock)
    for _ in range(3):
        endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    for _ in range(6):
        endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    assert endpoint.times_ejected == 1
    clock.advance(1.01)
    assert endpoint.is_available()


def test_record_outcome_feeds_the_latency_estimate_and_counts_only_failures() -> None:
    clock = FakeClock()
    endpoint = make_endpoint("127.0.0.2:1", clock)
    assert endpoint.latency_estimate() == 0.0
    endpoint.record_outcome(grpc.StatusCode.OK, 0.25)
    assert endpoint.latency_estimate() == pytest.approx(0.25)
    endpoint.record_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, 0.5)  # a cut attempt: that slow
    assert endpoint.latency_estimate() == pytest.approx(0.5)
    endpoint.record_outcome(grpc.StatusCode.OK)  # no duration: the estimate is left alone
    assert endpoint.latency_estimate() == pytest.approx(0.5)
    assert (endpoint.failures, endpoint.stats().failures) == (1, 1)


def test_an_endpoint_that_keeps_no_latency_estimate_reports_zero_and_still_counts() -> None:
    clock = FakeClock()
    endpoint = Endpoint(address("127.0.0.2:1"), clock=clock, track_latency=False)
    endpoint.record_outcome(grpc.StatusCode.OK, 0.25)
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE, 0.5)
    assert endpoint.latency_estimate() == 0.0
    assert endpoint.failures == 1


def test_an_outrun_copy_counts_apart_from_failures_but_still_ejects() -> None:
    clock = FakeClock()
    endpoint = make_endpoint("127.0.0.2:1", clock)
    for _ in range(2):
        endpoint.record_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, 0.5, outrun=True)
    assert endpoint.is_available()
    assert (endpoint.failures, endpoint.outruns) == (0, 2)
    assert endpoint.latency_estimate() == pytest.approx(0.5)  # a slow answer, learnt
    endpoint.record_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, 0.5, outrun=True)
    assert endpoint.is_ejected()  # Three in a row, as three timeouts would.
    stats = endpoint.stats()
    assert (stats.failures, stats.outruns, stats.times_ejected) == (0, 3, 1)
    endpoint.record_outcome(grpc.StatusCode.UNAVAILABLE)
    assert (endpoint.stats().failures, endpoint.stats().outruns) == (1, 3)


# --- health -----------------------------------------------------------------------------------


async def test_health_watch_follows_not_serving_and_back(server: InProcessServer) -> None:
    endpoint = make_endpoint(server.address, health_check=True)
    endpoint.start()
    await eventually(lambda: endpoint.state is EndpointState.SERVING)
    await server.set_serving(False)
    await eventually(lambda: endpoint.state is EndpointState.NOT_SERVING)
    assert not endpoint.is_available()
    await server.set_serving(True)
    await eventually(lambda: endpoint.state is EndpointState.SERVING)
    assert endpoint.is_available()
    await endpoint.close()


async def test_a_server_without_health_service_is_assumed_serving() -> None:
    async with FakeReplica("127.0.0.3", name="plain") as plain:
        endpoint = make_endpoint(plain.address, health_check=True)
        endpoint.start()
        await eventually(lambda: endpoint.state is EndpointState.SERVING)
        assert endpoint.is_available()
        await endpoint.close()


async def test_a_broken_health_watch_makes_the_endpoint_unavailable(
    server: InProcessServer,
) -> None:
    endpoint = make_endpoint(server.address, health_check=True, health_backoff_initial=0.05)
    endpoint.start()
    await eventually(lambda: endpoint.state is EndpointState.SERVING)
    await server.stop()
    await eventually(lambda: not endpoint.is_available())
    # The stream broke, then the reconnect found nobody: down, not "connecting".
    await eventually(lambda: endpoint.state is EndpointState.UNREACHABLE)
    assert not endpoint.is_available()
    await endpoint.close()


async def test_a_replica_that_comes_back_on_its_address_is_serving_again(
    server: InProcessServer,
) -> None:
    endpoint = make_endpoint(server.address, health_check=True)
    endpoint.start()
    await eventually(lambda: endpoint.state is EndpointState.SERVING)
    await server.stop()
    await eventually(lambda: endpoint.state is EndpointState.UNREACHABLE)
    await asyncio.sleep(1.5)  # Long enough for the reconnect backoff to reach its cap.
    assert endpoint.state is EndpointState.UNREACHABLE
    port = int(server.address.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    async with serve("127.0.0.2", port=port):
        back_from = loop.time()
        # Within one capped reconnect (1 s) plus one watch backoff (1 s), and margin.
        await eventually(lambda: endpoint.state is EndpointState.SERVING, within=4.0)
        assert loop.time() - back_from < 4.0
        assert endpoint.is_available()
    await endpoint.close()


async def test_an_address_where_nothing_listens_is_unreachable_not_connecting() -> None:
    endpoint = make_endpoint(f"127.0.0.2:{free_port('127.0.0.2')}", health_check=True)
    assert endpoint.state is EndpointState.CONNECTING  # Nothing tried yet.
    endpoint.start()
    await eventually(lambda: endpoint.state is EndpointState.UNREACHABLE)
    assert not endpoint.is_available()
    assert endpoint.stats().state == "UNREACHABLE"
    await endpoint.close()


async def test_without_health_checks_a_failed_channel_is_unreachable() -> None:
    endpoint = make_endpoint(f"127.0.0.2:{free_port('127.0.0.2')}")
    endpoint.start()
    assert endpoint.state is EndpointState.READY
    async with endpoint.lease() as lease:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await lease.stub.GetUser(user_pb2.GetUserRequest(id="u-x"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: endpoint.state is EndpointState.UNREACHABLE)
    assert not endpoint.is_available()
    await endpoint.close()


def test_reconnect_backoff_follows_the_health_backoff() -> None:
    options = dict(PoolConfig(health_backoff_initial=0.2, health_backoff_max=2.0).channel_options())
    assert options["grpc.initial_reconnect_backoff_ms"] == 200
    assert options["grpc.max_reconnect_backoff_ms"] == 2000


# --- draining ---------------------------------------------------------------------------------


async def test_drain_waits_for_in_flight_calls_then_closes(server: InProcessServer) -> None:
    endpoint = make_endpoint(server.address)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(endpoint.lease())
        drain = asyncio.create_task(endpoint.drain(grace=10))
        await eventually(lambda: endpoint.state is EndpointState.DRAINING)
        assert not endpoint.is_available()
        with pytest.raises(EndpointDrainingError, match="draining"):
            async with endpoint.lease():
                pass
        await asyncio.sleep(0.05)
        assert not drain.done()
        assert endpoint.channel_count == 1  # The running call keeps its channel.
    await asyncio.wait_for(drain, 5)
    assert endpoint.channel_count == 0
    assert endpoint.in_flight == 0


async def test_drain_closes_after_the_grace_even_with_calls_running(
    server: InProcessServer,
) -> None:
    endpoint = make_endpoint(server.address)
    async with endpoint.lease():
        await asyncio.wait_for(endpoint.drain(grace=0.05), 5)
        assert endpoint.channel_count == 0
    assert endpoint.in_flight == 0
