"""DnsResolver when answers go wrong: one family denied, and the reasons it reports.

Against the real loopback DNS server (``client.testing.DnsServer``); its ``rcodes``
knob plays a server that answers NXDOMAIN for AAAA only, or REFUSED. A silent
UDP socket on loopback plays a server that never answers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import dns.asyncresolver
import dns.message
import dns.resolver
import pytest

from client._discovery_backoff import DiscoveryBackoff
from client._dns import DnsResolver, _nameserver_text
from client.testing import DnsServer, eventually
from tests.resolvers.helpers import Collector, addrs, next_update

NAME = "api.mesh.test"
FAST = DiscoveryBackoff(initial=0.05, multiplier=2.0, cap=0.1, jitter=0.0)
QUERY = dns.message.make_query(NAME, "A")
#: Words that would mean an internal class leaked into a reason.
CLASS_NAMES = ("dns.", "NXDOMAIN(", "LifetimeTimeout", "NoNameservers", "Exception", "Error")
#: A DNS server that is only written into messages, never asked: the tests that name it
#: are plain functions (no event loop), so their resolver never starts and sends nothing.
#: Not 5353, where mDNS listens: a test that did send would reach a real server. The
#: tests that do send use a server they started (``dns_server``, ``silent_server``).
UNDIALLED_PORT = 1
UNDIALLED = f"127.0.0.1:{UNDIALLED_PORT}"


def make(server_address: str, **options: Any) -> DnsResolver:
    options.setdefault("backoff", FAST)
    return DnsResolver.from_target(server_address, f"{NAME}:50051", **options)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a UDP socket that reads queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def assert_never_started(resolver: DnsResolver) -> None:
    """Nothing was sent: the task that makes the queries never began."""
    assert resolver._task is None


def assert_plain(reason: str | None) -> None:
    assert reason is not None
    for word in CLASS_NAMES:
        assert word not in reason, reason


# --- one family denied --------------------------------------------------------------------


async def test_aaaa_nxdomain_still_gives_the_a_records(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2", "127.0.0.3"])
    dns_server.rcodes = {"AAAA": "NXDOMAIN"}
    resolver = make(dns_server.address)
    try:
        assert await next_update(resolver.updates()) == addrs("127.0.0.2", "127.0.0.3")
        assert resolver.last_failure is None
        assert dns_server.count("AAAA") == 1  # asked, denied, and not taken for the name
    finally:
        await resolver.close()


async def test_a_nxdomain_still_gives_the_aaaa_records(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["::1"])
    dns_server.rcodes = {"A": "NXDOMAIN"}
    resolver = make(dns_server.address)
    try:
        assert await next_update(resolver.updates()) == addrs("::1")
        assert resolver.last_failure is None
    finally:
        await resolver.close()


# --- reasons --------------------------------------------------------------------------------


async def test_nxdomain_says_so_and_names_the_server(dns_server: DnsServer) -> None:
    resolver = make(dns_server.address)
    try:
        assert await next_update(resolver.updates()) == frozenset()
        assert resolver.last_failure == f"{NAME}: NXDOMAIN from {dns_server.address}"
    finally:
        await resolver.close()


async def test_a_name_without_records_says_so(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, [])
    resolver = make(dns_server.address)
    try:
        assert await next_update(resolver.updates()) == frozenset()
        assert resolver.last_failure == f"{NAME}: no A or AAAA records at {dns_server.address}"
    finally:
        await resolver.close()


async def test_a_silent_server_times_out_with_its_address(silent_server: str) -> None:
    resolver = make(silent_server, query_timeout=0.2)
    collector = Collector(resolver.updates())
    try:
        await eventually(lambda: resolver.last_failure is not None)
        assert resolver.last_failure == f"{NAME}: timed out asking {silent_server}"
        assert resolver.current is None  # nothing was ever known
        assert collector.sets == []
    finally:
        await resolver.close()


async def test_refused_names_the_refusing_server(dns_server: DnsServer) -> None:
    dns_server.rcodes = {"*": "REFUSED"}
    resolver = make(dns_server.address)
    resolver.start()
    try:
        await eventually(lambda: resolver.last_failure is not None)
        assert resolver.last_failure == f"{NAME}: refused by {dns_server.address}"
    finally:
        await resolver.close()


async def test_servfail_names_the_server_and_keeps_the_set(
    dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = make(dns_server.address, min_ttl=0.05, min_interval=0.0)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        dns_server.servfail = True
        with caplog.at_level(logging.WARNING, logger="client._dns"):
            await eventually(lambda: resolver.last_failure is not None)
        reason = f"{NAME}: SERVFAIL from {dns_server.address}"
        assert resolver.last_failure == reason
        assert reason in caplog.text  # the log line says the same, no class name
        assert resolver.current == addrs("127.0.0.2")
        dns_server.servfail = False
        await eventually(lambda: resolver.last_failure is None)
        assert resolver.current == addrs("127.0.0.2")
    finally:
        await resolver.close()


async def test_a_server_that_stops_answering_then_comes_back(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, ["127.0.0.2"])
    resolver = make(dns_server.address, query_timeout=0.2, min_ttl=0.05, min_interval=0.0)
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        dns_server.stop()
        await eventually(lambda: resolver.last_failure is not None)
        assert resolver.last_failure == f"{NAME}: timed out asking {dns_server.address}"
        dns_server.start()  # the same port
        await eventually(lambda: resolver.last_failure is None)
        assert collector.sets == [addrs("127.0.0.2")]
    finally:
        await resolver.close()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            ConnectionRefusedError(111, "Connection refused"),
            f"asking {UNDIALLED} failed: Connection refused",
        ),
        (dns.resolver.NoResolverConfiguration(), "no DNS server configured"),
        (
            dns.resolver.NoNameservers(
                request=QUERY,
                errors=[
                    (f"Do53:127.0.0.1@{UNDIALLED_PORT}", False, UNDIALLED_PORT, "BADVERS", None)
                ],
            ),
            f"BADVERS from {UNDIALLED}",
        ),
        (
            dns.resolver.NoNameservers(
                request=QUERY,
                errors=[("Do53:::1@53", True, 53, OSError(104, "Connection reset by peer"), None)],
            ),
            "asking [::1]:53 failed: Connection reset by peer",
        ),
    ],
)
def test_other_failures_are_described_in_words(exc: BaseException, reason: str) -> None:
    resolver = make(UNDIALLED)
    described = resolver._describe_failure(exc)
    assert described.startswith(f"{NAME}: {reason}")
    assert_plain(described)
    assert_never_started(resolver)


def test_every_reason_is_free_of_class_names() -> None:
    resolver = make(UNDIALLED)
    timeout = dns.resolver.LifetimeTimeout(timeout=1.0, errors=[])
    assert_plain(resolver._describe_failure(timeout))
    no_servers = dns.resolver.NoNameservers(request=QUERY, errors=[])
    assert resolver._describe_failure(no_servers) == f"{NAME}: no answer from {UNDIALLED}"
    assert_never_started(resolver)


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        (f"Do53:127.0.0.1@{UNDIALLED_PORT}", UNDIALLED_PORT, UNDIALLED),
        ("Do53:::1@53", 53, "[::1]:53"),
        ("10.96.0.10", 53, "10.96.0.10:53"),
        ("https://dns.example/dns-query", 443, "https://dns.example/dns-query"),
    ],
)
def test_nameserver_text(text: str, port: int, expected: str) -> None:
    assert _nameserver_text(text, port) == expected


def test_the_system_configuration_names_each_nameserver() -> None:
    system_like = dns.asyncresolver.Resolver(configure=False)
    system_like.nameservers = ["127.0.0.1", "::1"]
    system_like.port = UNDIALLED_PORT
    resolver = DnsResolver.from_target("", f"{NAME}:1", dns_resolver=system_like)
    timeout = dns.resolver.LifetimeTimeout(timeout=1.0, errors=[])
    reason = resolver._describe_failure(timeout)
    assert reason == f"{NAME}: timed out asking {UNDIALLED}, [::1]:{UNDIALLED_PORT}"
    assert_never_started(resolver)


def test_str_is_the_canonical_target() -> None:
    assert str(make(UNDIALLED)) == f"dns://{UNDIALLED}/{NAME}:50051"
    assert str(DnsResolver.from_target("", "api:1")) == "dns:///api:1"


async def test_one_family_failing_keeps_both_families_of_the_last_set(
    dns_server: DnsServer,
) -> None:
    dns_server.publish(NAME, ["127.0.0.2", "::1"])
    resolver = make(dns_server.address, min_ttl=0.05, min_interval=0.0)
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == addrs("127.0.0.2", "::1")
        dns_server.rcodes = {"AAAA": "SERVFAIL"}  # A still answers
        await eventually(lambda: resolver.last_failure is not None)
        assert resolver.last_failure == f"{NAME}: SERVFAIL from {dns_server.address}"
        assert resolver.current == addrs("127.0.0.2", "::1")  # the v6 endpoint is not dropped
        assert collector.sets == [addrs("127.0.0.2", "::1")]
    finally:
        await resolver.close()
