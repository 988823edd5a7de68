"""The health servicer: the stock semantics, and no watcher can hold up a status change.

The stuck watcher is a stand-in context whose ``write`` never returns (a
client that stopped reading, its flow-control window full): the one seam
here, since a real peer cannot be made to stop reading on cue. Everything
else runs against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.health import SERVICE_NAME, HealthServicer
from tests.aio_stubs import EOF

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _NeverDrained:
    """A Watch context whose second write blocks forever."""

    def __init__(self) -> None:
        self.written: list[int] = []

    async def write(self, reply: health_pb2.HealthCheckResponse) -> None:
        self.written.append(reply.status)
        if len(self.written) > 1:
            await asyncio.Event().wait()


async def test_a_watcher_that_stops_reading_holds_up_no_change_and_no_shutdown() -> None:
    servicer = HealthServicer()
    await servicer.set(SERVICE_NAME, SERVING)
    stuck = _NeverDrained()
    watch = asyncio.create_task(
        servicer.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), stuck)
    )
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        await servicer.set(SERVICE_NAME, NOT_SERVING)  # the watcher now blocks in write
        await asyncio.sleep(0.05)
        await servicer.set(SERVICE_NAME, SERVING)
        await servicer.enter_graceful_shutdown()
    assert stuck.written == [SERVING, NOT_SERVING]
    watch.cancel()  # what grpc does when the peer goes away
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert servicer._watchers == {}  # nothing left behind


@pytest.fixture
async def health() -> Any:
    servicer = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, health_pb2_grpc.HealthStub(channel)
    finally:
        await channel.close(None)
        await server.stop(None)


async def test_check_knows_the_overall_service_and_refuses_unknown_ones(health: Any) -> None:
    _, stub = health
    assert (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_unknown_then_every_change_then_ends_ok(health: Any) -> None:
    servicer, stub = health
    call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert (await call.read()).status == UNKNOWN
    await servicer.set(SERVICE_NAME, SERVING)
    assert (await call.read()).status == SERVING
    await servicer.enter_graceful_shutdown()
    assert (await call.read()).status == NOT_SERVING
    await servicer.set(SERVICE_NAME, SERVING)  # ignored once shutting down
    servicer.end_watches()
    assert await call.read() is EOF
    assert await call.code() == grpc.StatusCode.OK
    late = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert await late.read() is EOF  # no new watch after the end


async def test_a_probe_stuck_in_its_store_does_not_hold_the_shutdown() -> None:
    from service.health import HealthReporter

    class StuckStore:
        """A store whose ping never returns and ignores being cancelled once."""

        async def ping(self) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(30)  # a cleanup that waits behind the store's queue

    reporter = HealthReporter(StuckStore(), interval=0.01, probe_timeout=60)  # type: ignore[arg-type]

    async def probing() -> None:  # the reporter's task runs probes and returns nothing
        await reporter.probe()

    probe = reporter._task = asyncio.create_task(probing())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(reporter.enter_graceful_shutdown(), 10)
    assert loop.time() - started < 5  # bounded by the stop wait, not the store
    probe.cancel()  # the second cancel ends the store's long cleanup
    with contextlib.suppress(asyncio.CancelledError):
        await probe


async def test_a_stop_that_lands_as_the_probe_answers_still_stops_it() -> None:
    # Python 3.11's asyncio.wait_for returned the answer and dropped the cancel when both
    # came in the same turn of the event loop: the probe loop then ran on after stop(),
    # and a test's event loop could not close (its teardown waited on the loop for ever).
    from service.health import HealthReporter

    loop = asyncio.get_running_loop()
    answer: asyncio.Future[None] = loop.create_future()

    class Store:
        async def ping(self) -> None:
            await answer

    reporter = HealthReporter(Store(), interval=0.01)  # type: ignore[arg-type]
    probe = asyncio.create_task(reporter.probe())
    await asyncio.sleep(0)  # The probe waits on the store.
    answer.set_result(None)
    probe.cancel()  # In the same instant as the answer.
    with pytest.raises(asyncio.CancelledError):
        await probe
