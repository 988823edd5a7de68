"""EndpointSet: membership from a resolver, draining, waiting for discovery, re-resolution."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence

import grpc
import pytest

from client import Endpoint, EndpointSet, EndpointState, NoEndpointError, PoolConfig
from client.testing import FakeClock, ManualResolver, eventually
from service.testing import InProcessServer
from tests.client.conftest import HOSTS, serve_many


@pytest.fixture
async def two(store_url: str) -> AsyncIterator[list[InProcessServer]]:
    async with serve_many(HOSTS[:2], store_url) as servers:
        yield servers


def endpoint_set(resolver: object, **pool: object) -> EndpointSet:
    settings: dict[str, object] = {"health_check": False, **pool}
    return EndpointSet(
        resolver,  # type: ignore[arg-type]
        pool=PoolConfig(**settings),  # type: ignore[arg-type]
        maintenance_interval=None,
    )


async def test_new_addresses_get_endpoints_and_removed_ones_drain(
    two: list[InProcessServer],
) -> None:
    resolver = ManualResolver()
    endpoints = endpoint_set(resolver)
    endpoints.start()
    a, b = (s.address for s in two)
    resolver.publish(a, b)
    await eventually(lambda: len(endpoints.endpoints) == 2)
    old = endpoints.endpoints[0]
    assert str(old.address) == a
    async with old.lease():
        resolver.publish(b)
        await eventually(lambda: len(endpoints.endpoints) == 1)
        assert [str(e.address) for e in endpoints.endpoints] == [b]
        # Still listed (draining) while its call runs; never picked again.
        assert [s.state for s in endpoints.stats()] == ["READY", "DRAINING"]
        assert all(endpoints.pick() is not old for _ in range(20))
        assert old.channel_count == 1
    await eventually(lambda: len(endpoints.stats()) == 1)
    assert old.channel_count == 0
    await endpoints.close()


async def test_a_removed_then_readded_address_gets_a_fresh_endpoint(
    two: list[InProcessServer],
) -> None:
    resolver = ManualResolver()
    endpoints = endpoint_set(resolver)
    endpoints.start()
    a = two[0].address
    resolver.publish(a)
    await eventually(lambda: len(endpoints.endpoints) == 1)
    first = endpoints.endpoints[0]
    resolver.publish()
    await eventually(lambda: not endpoints.endpoints)
    resolver.publish(a)
    await eventually(lambda: len(endpoints.endpoints) == 1)
    assert endpoints.endpoints[0] is not first
    assert endpoints.endpoints[0].state is EndpointState.READY
    await endpoints.close()


async def test_wait_pick_waits_for_the_first_resolution(two: list[InProcessServer]) -> None:
    resolver = ManualResolver()
    endpoints = endpoint_set(resolver)
    waiter = asyncio.create_task(endpoints.wait_pick(max_wait=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    resolver.publish(two[0].address)
    picked = await asyncio.wait_for(waiter, 5)
    assert str(picked.address) == two[0].address
    await endpoints.close()


async def test_wait_pick_gives_up_after_its_bound() -> None:
    endpoints = endpoint_set(ManualResolver())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoEndpointError):
        await endpoints.wait_pick(max_wait=0.1)
    assert loop.time() - started < 1.0
    await endpoints.close()


async def test_an_empty_set_raises_no_endpoint() -> None:
    resolver = ManualResolver()
    endpoints = endpoint_set(resolver)
    endpoints.start()
    resolver.publish()
    with pytest.raises(NoEndpointError):
        await endpoints.wait_pick(max_wait=1)
    await endpoints.close()


def test_unavailable_asks_the_resolver_to_re_resolve() -> None:
    resolver = ManualResolver("127.0.0.2:1")
    endpoints = endpoint_set(resolver)
    fake = object()
    endpoints.report_failure(fake, grpc.StatusCode.NOT_FOUND)  # type: ignore[arg-type]
    assert resolver.resolve_now_calls == 0
    endpoints.report_failure(fake, grpc.StatusCode.UNAVAILABLE)  # type: ignore[arg-type]
    endpoints.report_failure(fake, None)  # type: ignore[arg-type]
    assert resolver.resolve_now_calls == 2


async def test_stats_and_repr_count_endpoints(two: list[InProcessServer]) -> None:
    resolver = ManualResolver(*(s.address for s in two))
    endpoints = endpoint_set(resolver)
    endpoint = await endpoints.wait_pick(max_wait=5)
    async with endpoint.lease():
        assert repr(endpoints) == "<EndpointSet active=2 draining=0 in_flight=1>"
        assert sum(s.in_flight for s in endpoints.stats()) == 1
    assert [s.address for s in endpoints.stats()] == sorted(s.address for s in two)
    await endpoints.close()
    assert endpoints.stats() == []


class _OwnPicker:
    """A user's picker that does not say whether it reads latency estimates."""

    def pick(self, endpoints: Sequence[Endpoint], exclude: Collection[object] = ()) -> Endpoint:
        return endpoints[0]


@pytest.mark.parametrize(
    ("picker", "tracked"),
    [("least_conn", False), ("round_robin", False), ("peak_ewma", True), (_OwnPicker(), True)],
)
async def test_endpoints_keep_a_latency_estimate_only_for_a_picker_that_may_read_it(
    picker: object, tracked: bool
) -> None:
    resolver = ManualResolver("127.0.0.2:1")
    endpoints = EndpointSet(
        resolver,
        picker=picker,  # type: ignore[arg-type]
        clock=FakeClock(),  # The estimate decays with time: none passes here.
        maintenance_interval=None,
    )
    assert not endpoints.resolved
    assert endpoints.pick_resolved() is None  # Nothing resolved yet: a wait is needed.
    endpoints.start()
    await eventually(lambda: endpoints.resolved)
    (endpoint,) = endpoints.endpoints
    assert endpoints.pick_resolved() is endpoint
    endpoint.record_outcome(grpc.StatusCode.OK, 0.25)
    assert endpoint.latency_estimate() == (pytest.approx(0.25) if tracked else 0.0)
    await endpoints.close()
