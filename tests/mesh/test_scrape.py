"""mesh._scrape: timeline samples from real replicas' /metrics on loopback.

Counting, resets and p99 are checked against real replicas (``service.testing.serve``
with ``metrics_port=0``) after real calls. The edge cases a replica cannot be
made to show on demand (a page that changes in a chosen way, a missed
scrape, a non-200 answer) use a real loopback HTTP server that serves
Prometheus text the test writes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from client import NotFoundError, UserClient
from client.testing import FakeClock
from mesh._scrape import MetricsScraper, _get_metrics, histogram_quantile
from service.testing import InProcessServer, admin_token, serve

INF = float("inf")


def metrics_target(server: InProcessServer) -> str:
    port = server.replica.metrics_port
    assert port is not None
    return f"{server.replica.config.host}:{port}"  # served on the replica's own address


async def handled_calls(target: str) -> float:
    """UserService calls the page at ``target`` counts now."""
    text = await _get_metrics(target, 2.0)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total") and "meshdemo.v1.UserService" in line
    )


async def wait_counted(target: str, calls: int) -> None:
    """Until the server's counters include ``calls`` calls (they move after the reply)."""
    for _ in range(100):
        if await handled_calls(target) >= calls:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{target} never counted {calls} calls")


async def make_calls(server: InProcessServer, gets: int, missing: int = 0) -> int:
    """One create, ``gets`` reads and ``missing`` NOT_FOUND reads; the call count."""
    async with UserClient(
        f"static:///{server.address}", token=admin_token(), tracing=False
    ) as client:
        user = await client.create_user("Ada", f"ada-{id(client)}@example.com", 36)
        for _ in range(gets):
            await client.get_user(user.id)
        for _ in range(missing):
            with pytest.raises(NotFoundError):
                await client.get_user("0" * 26)
    return 1 + gets + missing


async def test_rates_failures_and_p99_from_a_real_replica() -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock, started=90.0)
    async with serve("127.0.0.2", metrics_port=0) as replica:
        targets = {"users-0": metrics_target(replica)}
        first = await scraper.scrape(targets)
        assert (first.t, first.rates, first.p99_ms, first.failures) == (
            10.0,
            {"users-0": 0},
            None,
            0,
        )
        calls = await make_calls(replica, gets=9, missing=2)
        await wait_counted(targets["users-0"], calls)
        clock.now += 4.0
        second = await scraper.scrape(targets)
        assert second.t == 14.0
        # Health Watch/Check calls of the client are not counted: 12 calls in 4 s.
        assert second.rates == {"users-0": pytest.approx(12 / 4)}
        assert second.failures == 2  # the NOT_FOUND reads
        assert second.p99_ms is not None
        assert 0 < second.p99_ms < 1000
        # Nothing happened since: rate 0, no latency.
        clock.now += 1.0
        third = await scraper.scrape(targets)
        assert (third.rates, third.p99_ms, third.failures) == ({"users-0": 0.0}, None, 0)


async def test_a_restarted_replica_on_the_same_port_counts_as_a_reset() -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    async with serve("127.0.0.2", metrics_port=0) as before:
        target = metrics_target(before)
        await wait_counted(target, await make_calls(before, gets=7))
        await scraper.scrape({"users-0": target})  # baseline: 8 calls
    port = int(target.rsplit(":", 1)[1])
    async with serve("127.0.0.2", metrics_port=port) as after:
        assert metrics_target(after) == target
        await wait_counted(target, await make_calls(after, gets=1))
        clock.now += 2.0
        sample = await scraper.scrape({"users-0": target})
    # 2 calls since the restart, not 2 - 8: the drop is a reset, as rate() reads it.
    assert sample.rates == {"users-0": pytest.approx(2 / 2)}


async def test_a_replica_at_a_new_address_counts_from_zero() -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    async with serve("127.0.0.2", metrics_port=0) as old:
        await wait_counted(metrics_target(old), await make_calls(old, gets=1))
        await scraper.scrape({"users-0": metrics_target(old)})  # baseline: 2 calls
    async with serve("127.0.0.2", metrics_port=0) as new:
        # More calls than before, so only the changed address shows the restart.
        await wait_counted(metrics_target(new), await make_calls(new, gets=5))
        clock.now += 3.0
        sample = await scraper.scrape({"users-0": metrics_target(new)})
    assert sample.rates == {"users-0": pytest.approx(6 / 3)}


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_replica_that_does_not_answer_counts_zero() -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock, timeout=0.2)
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        async with serve("127.0.0.2", metrics_port=0) as alive:
            targets = {
                "users-0": metrics_target(alive),
                "users-1": f"127.0.0.1:{free_port()}",  # refused
                "users-2": f"127.0.0.1:{silent_port}",  # accepts, never answers
            }
            await scraper.scrape(targets)
            await wait_counted(targets["users-0"], await make_calls(alive, gets=3))
            clock.now += 2.0
            loop = asyncio.get_running_loop()
            began = loop.time()
            sample = await scraper.scrape(targets)
            assert loop.time() - began < 1.5  # bounded by the timeout, scraped at once
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert sample.rates == {"users-0": pytest.approx(2.0), "users-1": 0.0, "users-2": 0.0}


# -- edge cases from pages the test writes ------------------------------------


def page(calls: int, failures: int = 0, cancelled: int = 0, le_counts: str = "") -> str:
    """A /metrics page: ``calls`` OK unary calls with the given bucket counts."""
    svc = 'grpc_service="meshdemo.v1.UserService"'
    lines = [
        f'grpc_server_handled_total{{grpc_code="OK",grpc_method="GetUser",{svc}}} {calls}',
        f'grpc_server_handled_total{{grpc_code="UNAVAILABLE",grpc_method="GetUser",{svc}}} '
        f"{failures}",
        f'grpc_server_handled_total{{grpc_code="CANCELLED",grpc_method="GetUser",{svc}}} '
        f"{cancelled}",
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",'
        'grpc_service="grpc.health.v1.Health"} 1000',
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Chat",'
        f'{svc},grpc_type="bidi_stream"}} 0',
    ]
    for bound, count in (pair.split("=") for pair in le_counts.split(",") if pair):
        lines.append(
            f'grpc_server_handling_seconds_bucket{{grpc_method="GetUser",{svc},'
            f'grpc_type="unary",le="{bound}"}} {count}'
        )
        # A Chat session of a minute is not latency: never counted.
        lines.append(
            f'grpc_server_handling_seconds_bucket{{grpc_method="Chat",{svc},'
            f'grpc_type="bidi_stream",le="{bound}"}} {1000 if bound == "+Inf" else 0}'
        )
    handled, handling = lines[:5], lines[5:]
    return (
        "\n".join(
            [
                "# TYPE grpc_server_handled_total counter",
                *handled,
                "# TYPE grpc_server_handling_seconds histogram",
                *handling,
            ]
        )
        + "\n"
    )


class PageServer:
    """A real HTTP server on 127.0.0.1 answering GET /metrics with ``text`` (or ``status``)."""

    def __init__(self) -> None:
        self.text = ""
        self.status = "200 OK"
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PageServer:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def target(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = self.text.encode()
        head = f"HTTP/1.0 {self.status}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with PageServer() as server:
        yield server


BUCKETS = "0.005={a},0.01={b},0.025={c},+Inf={d}"


def buckets(a: int, b: int, c: int, d: int) -> str:
    return BUCKETS.format(a=a, b=b, c=c, d=d)


async def test_p99_interpolates_within_the_bucket_of_the_interval(pages: PageServer) -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    pages.text = page(1000, le_counts=buckets(500, 900, 1000, 1000))
    await scraper.scrape({"r": pages.target})
    # In the interval: 100 calls, 50 under 5 ms, 40 in (5, 10], 10 in (10, 25] ms.
    pages.text = page(1100, le_counts=buckets(550, 990, 1100, 1100))
    clock.now += 1.0
    sample = await scraper.scrape({"r": pages.target})
    # Rank 99 of 100 falls in (10, 25] ms, 9 of its 10: 10 + 15 * 9 / 10.
    assert sample.p99_ms == pytest.approx(23.5)
    assert sample.rates == {"r": pytest.approx(100.0)}


async def test_cancelled_is_no_failure_and_health_is_no_call(pages: PageServer) -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    pages.text = page(10, failures=1, cancelled=1)
    await scraper.scrape({"r": pages.target})
    pages.text = page(20, failures=4, cancelled=9)
    clock.now += 1.0
    sample = await scraper.scrape({"r": pages.target})
    assert sample.failures == 3
    assert sample.rates == {"r": pytest.approx(10 + 3 + 8)}


async def test_a_missed_scrape_spreads_the_calls_over_the_gap(pages: PageServer) -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    pages.text = page(0)
    await scraper.scrape({"r": pages.target})
    pages.status = "503 Service Unavailable"
    clock.now += 1.0
    assert (await scraper.scrape({"r": pages.target})).rates == {"r": 0.0}
    pages.status = "200 OK"
    pages.text = page(40)
    clock.now += 1.0
    # 40 calls since the last good scrape, 2 s ago.
    assert (await scraper.scrape({"r": pages.target})).rates == {"r": pytest.approx(20.0)}


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: setattr(p, "status", "404 Not Found"),
        lambda p: setattr(p, "text", "this is { not prometheus\n"),
        lambda p: setattr(p, "text", page(1) + "# padding\n" * 500_000),  # over 4 MB
    ],
    ids=["not-200", "not-prometheus", "too-large"],
)
async def test_a_page_that_is_not_metrics_counts_zero(
    pages: PageServer, spoil: Callable[[PageServer], None]
) -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    pages.text = page(0)
    await scraper.scrape({"r": pages.target})
    pages.text = page(10)
    spoil(pages)
    clock.now += 1.0
    assert (await scraper.scrape({"r": pages.target})).rates == {"r": 0.0}
    pages.status, pages.text = "200 OK", page(10)
    clock.now += 1.0
    # The spoiled answer was no baseline: 10 calls over the 2 s since the good one.
    assert (await scraper.scrape({"r": pages.target})).rates == {"r": pytest.approx(5.0)}
    assert repr(scraper) == "MetricsScraper(meshdemo.v1.UserService, 1 replica(s) seen)"


async def test_a_replica_no_longer_listed_is_forgotten(pages: PageServer) -> None:
    clock = FakeClock(100.0)
    scraper = MetricsScraper(clock=clock)
    pages.text = page(5)
    await scraper.scrape({"r": pages.target})
    assert (await scraper.scrape({})).rates == {}
    pages.text = page(50)
    clock.now += 1.0
    # Seen again: a new baseline, not 45 calls in the last second.
    assert (await scraper.scrape({"r": pages.target})).rates == {"r": 0.0}


@pytest.mark.parametrize("target", ["10.0.0.1:9090", "example.com:80", "127.0.0.1", "::1:x"])
async def test_targets_off_loopback_or_malformed_are_refused(target: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|host:port|does not appear"):
        await MetricsScraper().scrape({"r": target})


def test_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout"):
        MetricsScraper(timeout=0)


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        (0.5, [(0.1, 10), (0.2, 20), (INF, 20)], 0.1),
        (0.75, [(0.1, 10), (0.2, 20), (INF, 20)], 0.15),
        (0.25, [(0.1, 10), (0.2, 20), (INF, 20)], 0.05),  # from 0 in the first bucket
        (0.99, [(0.1, 1), (0.2, 1), (INF, 100)], 0.2),  # the +Inf bucket: highest bound
        (0.99, [(INF, 5), (0.2, 5), (0.1, 0)], 0.199),  # order does not matter
        (0.5, [(0.1, 0), (INF, 0)], None),
        (0.5, [], None),
    ],
)
def test_histogram_quantile_like_prometheus(
    q: float, cumulative: list[tuple[float, float]], expected: float | None
) -> None:
    got = histogram_quantile(q, cumulative)
    assert got == (None if expected is None else pytest.approx(expected))


def test_histogram_quantile_rejects_q_outside_0_1() -> None:
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, [(INF, 1)])
