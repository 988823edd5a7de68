"""DnsResolver against a real DNS server (dnslib, UDP on 127.0.0.1, port 0).

Where timing matters the resolver's clock and sleep are a ``FakeClock``;
the DNS traffic itself is real.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.name
import pytest

from client._discovery_backoff import DiscoveryBackoff
from client._dns import DEFAULT_TARGET_PORT, DnsResolver, _make_resolver
from client._resolver import Address, TargetError, resolver_for
from client.testing import DnsServer, FakeClock, eventually
from tests.resolvers.helpers import Collector, addrs, next_update

NAME = "api.mesh.test."
NO_JITTER = DiscoveryBackoff(initial=1.0, multiplier=2.0, cap=8.0, jitter=0.0)


def make(server: DnsServer, name: str = "api.mesh.test", **options: Any) -> DnsResolver:
    return DnsResolver.from_target(f"127.0.0.1:{server.port}", f"{name}:50051", **options)


def manual(server: DnsServer, clock: FakeClock, **options: Any) -> DnsResolver:
    options.setdefault("query_timeout", 2.0)
    return make(server, clock=clock, sleep=clock.sleep, random=lambda: 1.0, **options)


async def test_a_records_become_endpoints(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2", "127.0.0.3"])
    resolver = make(dns_server)
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.2", "127.0.0.3")
        assert dns_server.count("A") == 1
        assert dns_server.count("AAAA") == 1
    finally:
        await resolver.close()


async def test_a_and_aaaa_records_are_both_endpoints(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2", "::1"])
    resolver = make(dns_server)
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.2", "::1")
    finally:
        await resolver.close()


async def test_a_name_with_only_aaaa_records(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["::1"])
    resolver = make(dns_server)
    try:
        got = await next_update(resolver.updates())
        assert got == frozenset({Address("::1", 50051)})
        assert next(iter(got)).grpc_target == "ipv6:[::1]:50051"
    finally:
        await resolver.close()


async def test_changed_records_are_published_within_one_ttl(dns_server: DnsServer) -> None:
    # Real time: TTL 1 s, so the change must show within about a second.
    dns_server.ttl = 1
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = make(dns_server, min_ttl=1.0)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        loop = asyncio.get_running_loop()
        changed_at = loop.time()
        dns_server.publish(NAME, ["127.0.0.2", "127.0.0.4"])
        assert await collector.wait_for(2, within=4.0) == addrs("127.0.0.2", "127.0.0.4")
        assert loop.time() - changed_at < 2.5
    finally:
        await resolver.close()


async def test_unchanged_answers_are_not_republished(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.ttl = 5
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        for round_ in range(2, 5):
            await eventually(lambda: clock.pending == 1)  # the TTL wait
            assert clock.sleeps[-1] == 5
            await clock.tick(5)

            def asked(n: int = round_) -> bool:
                return dns_server.count("A") == n

            await eventually(asked)
        dns_server.publish(NAME, ["127.0.0.3"])
        await eventually(lambda: clock.pending == 1)
        await clock.tick(5)
        assert await collector.wait_for(2) == addrs("127.0.0.3")
        assert collector.sets == [addrs("127.0.0.2"), addrs("127.0.0.3")]
    finally:
        await resolver.close()


@pytest.mark.parametrize(("ttl", "expected_wait"), [(0, 1.0), (7, 7.0), (3600, 30.0)])
async def test_ttl_is_clamped_between_floor_and_cap(
    dns_server: DnsServer, clock: FakeClock, ttl: int, expected_wait: float
) -> None:
    dns_server.ttl = ttl
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock, min_ttl=1.0, max_ttl=30.0)
    try:
        await next_update(resolver.updates())
        await eventually(lambda: clock.pending == 1)
        assert clock.sleeps == [expected_wait]
    finally:
        await resolver.close()


async def test_nxdomain_is_the_empty_set_and_is_retried(
    dns_server: DnsServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.negative_ttl = 4
    resolver = manual(dns_server, clock)
    collector = Collector(resolver.updates())
    try:
        with caplog.at_level(logging.INFO, logger="client._dns"):
            assert await collector.wait_for(1) == frozenset()
        assert "NXDOMAIN" in caplog.text
        # Re-asked after the SOA's negative TTL; the name now exists.
        await eventually(lambda: clock.pending == 1)
        assert clock.sleeps == [4]
        dns_server.publish(NAME, ["127.0.0.2"])
        await clock.tick(4)
        assert await collector.wait_for(2) == addrs("127.0.0.2")
    finally:
        await resolver.close()


async def test_a_name_without_address_records_is_the_empty_set(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, [])  # the name exists, with neither A nor AAAA
    resolver = make(dns_server)
    try:
        assert await next_update(resolver.updates()) == frozenset()
        assert dns_server.count("A") == 1
    finally:
        await resolver.close()


async def test_records_removed_publish_the_empty_set(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        dns_server.remove(NAME)
        resolver.resolve_now()
        await eventually(lambda: clock.pending == 1)
        await clock.tick(1.0)  # min_interval
        assert await collector.wait_for(2) == frozenset()
    finally:
        await resolver.close()


async def test_server_down_keeps_the_last_set_and_recovers(
    dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Real time, small numbers: TTL 1 s, 0.5 s query timeout, short backoff.
    dns_server.publish(NAME, ["127.0.0.2"])
    backoff = DiscoveryBackoff(initial=0.2, multiplier=2.0, cap=0.4, jitter=0.0)
    resolver = make(dns_server, query_timeout=0.5, backoff=backoff, min_interval=0.1)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        dns_server.stop()
        with caplog.at_level(logging.WARNING, logger="client._dns"):
            await eventually(lambda: caplog.text.count("resolution failed") >= 2, within=8)
        assert resolver.current == addrs("127.0.0.2")
        assert collector.sets == [addrs("127.0.0.2")]
        assert not collector.ended
        dns_server.publish(NAME, ["127.0.0.3"])
        dns_server.start()  # same port again
        assert await collector.wait_for(2, within=8) == addrs("127.0.0.3")
    finally:
        await resolver.close()


async def test_servfail_keeps_the_last_set_and_backs_off_exponentially(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.ttl = 5
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock, backoff=NO_JITTER)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        dns_server.servfail = True
        await eventually(lambda: clock.pending == 1)
        await clock.tick(5)  # TTL runs out: first failure
        expected = [5.0, 1.0, 2.0, 4.0, 8.0, 8.0]
        for count in range(2, len(expected) + 1):

            def waiting(n: int = count) -> bool:
                return len(clock.sleeps) == n and clock.pending == 1

            await eventually(waiting)
            if count < len(expected):
                await clock.tick(clock.sleeps[-1])
        assert clock.sleeps == expected
        assert resolver.current == addrs("127.0.0.2")
        assert collector.sets == [addrs("127.0.0.2")]
        dns_server.servfail = False
        dns_server.publish(NAME, ["127.0.0.5"])
        await clock.tick(8.0)
        assert await collector.wait_for(2) == addrs("127.0.0.5")
        # Success resets the failure count: the next failure waits 1 s again.
        dns_server.servfail = True
        await eventually(lambda: clock.sleeps[-1] == 5 and clock.pending == 1)
        await clock.tick(5)
        await eventually(lambda: clock.sleeps[-1] == 1.0 and clock.pending == 1)
    finally:
        await resolver.close()


async def test_resolve_now_is_coalesced_and_rate_limited(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.ttl = 3600
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock, min_interval=1.0)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        assert dns_server.count("A") == 1
        for _ in range(10):
            resolver.resolve_now()
        # Woken at once, but the last query was 0 s ago: it waits out min_interval.
        await eventually(lambda: clock.sleeps[-1] == 1.0 and clock.pending == 1)
        await asyncio.sleep(0.1)
        assert dns_server.count("A") == 1
        await clock.tick(1.0)
        await eventually(lambda: dns_server.count("A") == 2)
        # All ten requests were served by that one query.
        await eventually(lambda: clock.sleeps[-1] == 30.0 and clock.pending == 1)
        await asyncio.sleep(0.1)
        assert dns_server.count("A") == 2
        # Asked again half a second later: the query waits for the other half.
        await clock.tick(0.5)
        resolver.resolve_now()
        resolver.resolve_now()
        await eventually(lambda: clock.sleeps[-1] == pytest.approx(0.5) and clock.pending == 1)
        assert dns_server.count("A") == 2
        await clock.tick(0.5)
        await eventually(lambda: dns_server.count("A") == 3)
    finally:
        await resolver.close()


async def test_resolve_now_after_the_interval_queries_at_once(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.ttl = 3600
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock, min_interval=1.0)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: clock.pending == 1)
        await clock.tick(2.0)  # not enough for the 30 s TTL wait
        dns_server.publish(NAME, ["127.0.0.3"])
        resolver.resolve_now()
        assert await collector.wait_for(2) == addrs("127.0.0.3")
        # The TTL waits before and after; no rate-limit wait was needed between.
        await eventually(lambda: len(clock.sleeps) == 2 and clock.pending == 1)
        assert clock.sleeps == [30.0, 30.0]
    finally:
        await resolver.close()


async def test_several_consumers_each_get_the_latest_set(
    dns_server: DnsServer, clock: FakeClock
) -> None:
    dns_server.ttl = 5
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = manual(dns_server, clock)
    first = Collector(resolver.updates())
    try:
        await first.wait_for(1)
        dns_server.publish(NAME, ["127.0.0.3"])
        await eventually(lambda: clock.pending == 1)
        await clock.tick(5)
        await first.wait_for(2)
        second = Collector(resolver.updates())
        third = Collector(resolver.updates())
        assert await second.wait_for(1) == addrs("127.0.0.3")  # the latest, not the first
        await third.wait_for(1)
        dns_server.publish(NAME, ["127.0.0.3", "127.0.0.4"])
        await eventually(lambda: clock.pending == 1)
        await clock.tick(5)
        for collector in (first, second, third):
            assert await collector.wait_for(3 if collector is first else 2) == addrs(
                "127.0.0.3", "127.0.0.4"
            )
        assert dns_server.count("A") == 3  # one query serves every consumer
    finally:
        await resolver.close()


async def test_close_ends_every_iterator(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = make(dns_server)
    collectors = [Collector(resolver.updates()) for _ in range(3)]
    for collector in collectors:
        await collector.wait_for(1)
    await resolver.close()
    for collector in collectors:
        await collector.wait_ended()
    # Iterating a closed resolver ends at once; resolve_now does nothing harmful.
    assert [s async for s in resolver.updates()] == []
    resolver.resolve_now()
    with pytest.raises(RuntimeError, match="closed"):
        resolver.start()
    await resolver.close()  # idempotent


async def test_close_before_any_answer_ends_the_iterator(dns_server: DnsServer) -> None:
    dns_server.stop()  # nothing answers: the first resolution never succeeds
    resolver = make(dns_server, query_timeout=0.5)
    collector = Collector(resolver.updates())
    await asyncio.sleep(0.05)
    await resolver.close()
    await collector.wait_ended()
    assert collector.sets == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.9:50099", Address("127.0.0.9", 50099)),
        ("[::1]:8443", Address("::1", 8443)),
        ("127.0.0.9", Address("127.0.0.9", DEFAULT_TARGET_PORT)),
    ],
)
async def test_an_ip_literal_resolves_to_itself_without_a_query(
    dns_server: DnsServer, target: str, expected: Address
) -> None:
    resolver = resolver_for(f"dns://127.0.0.1:{dns_server.port}/{target}")
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == frozenset({expected})
        resolver.resolve_now()
        await asyncio.sleep(0.1)
        assert dns_server.queries == []
        assert collector.sets == [frozenset({expected})]
        assert not collector.ended  # still open until close()
    finally:
        await resolver.close()
    await collector.wait_ended()


async def test_search_domains_and_ndots_apply_without_a_server(
    dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    system_like = dns.asyncresolver.Resolver(configure=False)
    system_like.nameservers = ["127.0.0.1"]
    system_like.port = dns_server.port
    system_like.search = [dns.name.from_text("mesh.test.")]
    system_like.ndots = 1
    resolver = DnsResolver.from_target(
        "", "api:50051", dns_resolver=system_like, hosts_file=tmp_path / "missing"
    )
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.2")
        # "api" has fewer than ndots dots: the search domain is tried first,
        # and AAAA is asked under the name A was found under.
        assert dns_server.queries == [("api.mesh.test.", "A"), ("api.mesh.test.", "AAAA")]
    finally:
        await resolver.close()


async def test_with_a_server_the_name_is_absolute(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = make(dns_server, name="api")  # no search list applies
    try:
        assert await next_update(resolver.updates()) == frozenset()
        assert {name for name, _ in dns_server.queries} == {"api."}
    finally:
        await resolver.close()


def test_a_server_target_asks_only_that_server() -> None:
    resolver = _make_resolver(("::1", 5353))
    assert resolver.nameservers == ["::1"]
    assert resolver.port == 5353
    assert resolver.search == []


@pytest.mark.parametrize(
    ("netloc", "path", "text"),
    [
        ("", "api.mesh.test:50051", "DnsResolver(dns:///api.mesh.test:50051)"),
        ("", "api.mesh.test", "DnsResolver(dns:///api.mesh.test:50051)"),
        ("127.0.0.1", "api:81", "DnsResolver(dns://127.0.0.1:53/api:81)"),
        ("[::1]:5300", "api:81", "DnsResolver(dns://[::1]:5300/api:81)"),
    ],
)
def test_from_target_parses_server_name_and_ports(netloc: str, path: str, text: str) -> None:
    assert repr(DnsResolver.from_target(netloc, path)) == text


@pytest.mark.parametrize(
    ("netloc", "path"),
    [
        ("dns.example:53", "api:50051"),  # the server must be an IP address
        ("127.0.0.1:99999", "api:50051"),
        ("", "api:0"),
        ("", "api:http"),
        ("", ""),
    ],
)
def test_from_target_rejects_malformed_targets(netloc: str, path: str) -> None:
    with pytest.raises(TargetError):
        DnsResolver.from_target(netloc, path)


@pytest.mark.parametrize(
    "options",
    [
        {"min_ttl": 0.0},
        {"min_ttl": 5.0, "max_ttl": 1.0},
        {"min_interval": -1.0},
        {"query_timeout": 0.0},
    ],
)
def test_bad_options_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        DnsResolver("api", 50051, **options)  # type: ignore[arg-type]


# -- names resolved on the machine: no DNS query (RFC 6761, the hosts file) --

HOSTS = """\
127.0.0.1 localhost
::1 localhost ip6-localhost   # IPv6 loopback
127.0.0.2 users.mesh users-0
127.0.0.3 users.mesh
"""


def local(dns_server: DnsServer, tmp_path: Path, target: str, hosts: str = HOSTS) -> DnsResolver:
    """A resolver without an authority whose DNS (if asked) is the test server."""
    path = tmp_path / "hosts"
    path.write_text(hosts)
    system_like = dns.asyncresolver.Resolver(configure=False)
    system_like.nameservers = ["127.0.0.1"]
    system_like.port = dns_server.port
    return DnsResolver.from_target("", target, dns_resolver=system_like, hosts_file=path)


async def assert_no_query(resolver: DnsResolver, dns_server: DnsServer) -> None:
    resolver.resolve_now()
    await asyncio.sleep(0.2)
    assert dns_server.queries == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", addrs("127.0.0.1", "::1")),
        ("LOCALHOST.:50051", addrs("127.0.0.1", "::1")),
        ("users.localhost:50051", addrs("127.0.0.1", "::1")),
        ("users.mesh:50051", addrs("127.0.0.2", "127.0.0.3")),
        ("users-0:50051", addrs("127.0.0.2")),
        ("ip6-localhost:50051", addrs("::1")),
    ],
)
async def test_local_names_resolve_without_a_dns_query(
    dns_server: DnsServer, tmp_path: Path, target: str, expected: frozenset[Address]
) -> None:
    dns_server.publish(target.rsplit(":", 1)[0], ["127.0.0.9"])  # DNS would say otherwise
    resolver = local(dns_server, tmp_path, target)
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == expected
        await assert_no_query(resolver, dns_server)
        assert collector.sets == [expected]
    finally:
        await resolver.close()


async def test_localhost_without_an_entry_is_both_loopbacks(
    dns_server: DnsServer, tmp_path: Path
) -> None:
    resolver = local(dns_server, tmp_path, "localhost:7000", hosts="# nothing\n")
    try:
        got = await next_update(resolver.updates())
        assert got == frozenset({Address("127.0.0.1", 7000), Address("::1", 7000)})
        assert {a.grpc_target for a in got} == {"ipv4:127.0.0.1:7000", "ipv6:[::1]:7000"}
        await assert_no_query(resolver, dns_server)
    finally:
        await resolver.close()


async def test_the_cli_default_target_never_builds_a_system_resolver(tmp_path: Path) -> None:
    # No dns_resolver given: a system one (reading resolv.conf) would be made
    # on the first query. Resolving localhost must not get that far.
    resolver = DnsResolver.from_target("", "localhost:50051", hosts_file=tmp_path / "missing")
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.1", "::1")
        assert resolver._dns is None
    finally:
        await resolver.close()


async def test_an_unknown_name_still_goes_to_dns(dns_server: DnsServer, tmp_path: Path) -> None:
    dns_server.publish(NAME, ["127.0.0.4"])
    resolver = local(dns_server, tmp_path, "api.mesh.test:50051")
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.4")
        assert dns_server.count("A", NAME) == 1
    finally:
        await resolver.close()


async def test_with_a_server_localhost_is_asked_of_it(dns_server: DnsServer) -> None:
    # An explicit DNS server is asked for every name, as before.
    dns_server.publish("localhost", ["127.0.0.7"])
    resolver = make(dns_server, name="localhost")
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.7")
        assert dns_server.count("A", "localhost") == 1
    finally:
        await resolver.close()


async def test_close_ends_a_query_whose_cancel_came_with_its_answer(
    dns_server: DnsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Python 3.11's asyncio.wait_for (dnspython waits through it) returns the answer and
    # drops the cancel when both come in the same instant. Played here on purpose: the
    # query holds its answer until it is cancelled, then returns it as that race does.
    dns_server.publish(NAME, ["127.0.0.2"])
    real = dns.asyncresolver.Resolver.resolve
    held = asyncio.Event()
    holding = False

    async def answer_on_cancel(self: dns.asyncresolver.Resolver, *args: Any, **kwargs: Any) -> Any:
        answer = await real(self, *args, **kwargs)
        if holding and not held.is_set():  # Only the query under way at close.
            held.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return answer  # The cancel swallowed, as wait_for does in that race.
        return answer

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", answer_on_cancel)
    resolver = make(dns_server, min_interval=0.0)
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.2")
        holding = True
        resolver.resolve_now()
        await asyncio.wait_for(held.wait(), 5)
    finally:
        began = asyncio.get_running_loop().time()
        await resolver.close()
    assert asyncio.get_running_loop().time() - began < 1.0  # Not _CLOSE_WAIT (5 s) or a TTL.
    assert "did not end" not in caplog.text
