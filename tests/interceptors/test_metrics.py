"""Prometheus metrics: counters, histogram and in-flight gauge on all four kinds."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from meshdemo.v1 import user_pb2
from service.interceptors import ErrorMappingInterceptor, MetricsInterceptor
from service.metrics import ServerMetrics, start_metrics_http_server
from tests.interceptors import servicer as cmd
from tests.interceptors.calls import KINDS, METHOD_OF, SERVER_STREAM, SERVICE, UNARY, call
from tests.interceptors.conftest import Harness, admin_md, eventually, harness_for
from tests.interceptors.servicer import FloodServicer, TestServicer


def labels(kind: str, **extra: str) -> dict[str, str]:
    return {"grpc_service": SERVICE, "grpc_method": METHOD_OF[kind], "grpc_type": kind, **extra}


def handled(harness: Harness, kind: str, code: str) -> float | None:
    return harness.sample("grpc_server_handled_total", **labels(kind, grpc_code=code))


def in_flight(harness: Harness, kind: str) -> float | None:
    return harness.sample(
        "grpc_server_in_flight", grpc_service=SERVICE, grpc_method=METHOD_OF[kind]
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_successful_calls_are_counted(harness: Harness, kind: str) -> None:
    for _ in range(3):
        assert (await call(harness.stub, kind, metadata=admin_md())).code == grpc.StatusCode.OK
    assert harness.sample("grpc_server_started_total", **labels(kind)) == 3
    assert handled(harness, kind, "OK") == 3
    assert harness.sample("grpc_server_handling_seconds_count", **labels(kind)) == 3
    assert in_flight(harness, kind) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("command", "code"),
    [(cmd.INVALID, "INVALID_ARGUMENT"), (cmd.BOOM, "INTERNAL"), (cmd.ABORT, "NOT_FOUND")],
)
async def test_failed_calls_are_counted_by_code(
    harness: Harness, kind: str, command: str, code: str
) -> None:
    await call(harness.stub, kind, command, metadata=admin_md())
    # context.abort() sends the status before the interceptor's bookkeeping runs, so the
    # client may see it a moment before the counter moves.
    await eventually(lambda: handled(harness, kind, code) == 1)
    assert handled(harness, kind, "OK") is None
    assert in_flight(harness, kind) == 0


async def test_in_flight_while_a_call_runs(harness: Harness) -> None:
    pending = asyncio.ensure_future(call(harness.stub, UNARY, cmd.SLEEP, metadata=admin_md()))
    await asyncio.wait_for(harness.servicer.seen.started.wait(), 5)
    assert in_flight(harness, UNARY) == 1
    assert harness.sample("grpc_server_started_total", **labels(UNARY)) == 1
    assert handled(harness, UNARY, "OK") is None
    pending.cancel()
    await eventually(lambda: handled(harness, UNARY, "CANCELLED") == 1)
    assert in_flight(harness, UNARY) == 0
    with pytest.raises(asyncio.CancelledError):
        await pending


@pytest.mark.parametrize("kind", KINDS)
async def test_deadline_counts_as_deadline_exceeded(harness: Harness, kind: str) -> None:
    outcome = await call(harness.stub, kind, cmd.SLEEP, metadata=admin_md(), deadline=0.3)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: handled(harness, kind, "DEADLINE_EXCEEDED") == 1)
    assert in_flight(harness, kind) == 0


async def test_stream_is_measured_over_the_whole_stream(harness: Harness) -> None:
    # Sleep after the items, then fail by deadline: the observation must
    # include the time spent after the last item.
    outcome = await call(harness.stub, SERVER_STREAM, cmd.SLEEP, metadata=admin_md(), deadline=0.4)
    assert outcome.responses == 2
    await eventually(
        lambda: harness.sample("grpc_server_handling_seconds_count", **labels(SERVER_STREAM)) == 1
    )
    total = harness.sample("grpc_server_handling_seconds_sum", **labels(SERVER_STREAM))
    assert total is not None
    assert total >= 0.3


async def test_refused_calls_are_counted_as_unauthenticated(harness: Harness) -> None:
    for kind in KINDS:
        assert (await call(harness.stub, kind, refused=True)).code.name == "UNAUTHENTICATED"
        assert handled(harness, kind, "UNAUTHENTICATED") == 1


class TestAbandonedStream:
    """The client cancels while the server is blocked writing: the generators
    are abandoned at a yield and closed later, ending with GeneratorExit."""

    @pytest.fixture
    def servicer(self) -> TestServicer:
        return FloodServicer()

    async def test_counts_as_cancelled(self, harness: Harness) -> None:
        stream = harness.stub.ListUsers(
            user_pb2.ListUsersRequest(page_size=5000), metadata=admin_md()
        )
        await stream.read()
        stream.cancel()
        await eventually(lambda: handled(harness, SERVER_STREAM, "CANCELLED") == 1)
        assert in_flight(harness, SERVER_STREAM) == 0
        [line] = await harness.wait_access(1)
        assert line["code"] == "CANCELLED"
        assert 1 <= line["responses"] < 5000
        [span] = await harness.wait_spans(1)
        assert line["trace_id"] == format(span.context.trace_id, "032x")


async def test_histogram_buckets_from_the_clock(exporter: Any, log_capture: Any) -> None:
    readings = iter([5.0, 5.003])
    metrics = ServerMetrics()
    chain = [
        ErrorMappingInterceptor(log_capture[0]),
        MetricsInterceptor(metrics, clock=readings.__next__),
    ]
    async with harness_for(
        chain, servicer=TestServicer(), exporter=exporter, metrics=metrics, log=log_capture
    ) as running:
        await call(running.stub, UNARY)
    bucket = "grpc_server_handling_seconds_bucket"
    assert running.sample(bucket, **labels(UNARY, le="0.0025")) == 0
    assert running.sample(bucket, **labels(UNARY, le="0.005")) == 1
    assert running.sample("grpc_server_handling_seconds_sum", **labels(UNARY)) == pytest.approx(
        0.003
    )


def test_each_server_metrics_has_its_own_registry() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.started.labels("s", "m", "unary").inc()
    assert (
        first.registry.get_sample_value(
            "grpc_server_started_total",
            {"grpc_service": "s", "grpc_method": "m", "grpc_type": "unary"},
        )
        == 1
    )
    assert (
        second.registry.get_sample_value(
            "grpc_server_started_total",
            {"grpc_service": "s", "grpc_method": "m", "grpc_type": "unary"},
        )
        is None
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_metrics_http_endpoint_serves_the_counters(harness: Harness) -> None:
    await call(harness.stub, UNARY, metadata=admin_md())
    await call(harness.stub, UNARY, cmd.INVALID, metadata=admin_md())
    port, stop = start_metrics_http_server(harness.metrics, "127.0.0.1", 0)
    try:
        assert port > 0
        text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    finally:
        stop()
    stop()  # idempotent
    get_user = 'grpc_method="GetUser",grpc_service="meshdemo.v1.UserService",grpc_type="unary"'
    assert f"grpc_server_started_total{{{get_user}}} 2.0" in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{get_user}}} 1.0' in text
    assert f'grpc_server_handled_total{{grpc_code="INVALID_ARGUMENT",{get_user}}} 1.0' in text
    assert "grpc_server_handling_seconds_bucket" in text
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
