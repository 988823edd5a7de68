"""Target parsing, ``StaticResolver`` and ``resolver_for`` dispatch."""

from __future__ import annotations

import asyncio

import pytest

from client._dns import DnsResolver
from client._resolver import (
    Address,
    Resolver,
    StaticResolver,
    TargetError,
    parse_hostport,
    resolver_for,
)
from tests.resolvers.helpers import Collector


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("api:50051", None, ("api", 50051)),
        (" 127.0.0.2:1 ", None, ("127.0.0.2", 1)),
        ("[::1]:65535", None, ("::1", 65535)),
        ("[::1]", 443, ("::1", 443)),
        ("api", 443, ("api", 443)),
        ("::1", 443, ("::1", 443)),  # a bare IPv6 literal has no port
    ],
)
def test_parse_hostport_accepts(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize(
    "text",
    ["api", "[::1]", "[::1", "[::1]x", "[::1]x:80", ":80", "[]:80", "api:0", "api:65536",
     "api:-1", "api:http", "api:٣", "api:²"],
)  # fmt: skip
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(TargetError):
        parse_hostport(text)


def test_address_formats() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert Address("127.0.0.2", 80).grpc_target == "ipv4:127.0.0.2:80"
    assert Address("::1", 80).grpc_target == "ipv6:[::1]:80"
    assert Address("api", 80).grpc_target == "dns:///api:80"


async def test_static_resolver_publishes_once_and_ends_at_close() -> None:
    resolver = resolver_for("static:///127.0.0.2:1,[::1]:2, ,")
    assert isinstance(resolver, StaticResolver)
    assert isinstance(resolver, Resolver)
    collector = Collector(resolver.updates())
    expected = frozenset({Address("127.0.0.2", 1), Address("::1", 2)})
    assert await collector.wait_for(1) == expected
    resolver.resolve_now()
    await asyncio.sleep(0.05)
    assert not collector.ended  # the protocol: iterators end only at close()
    await resolver.close()
    await collector.wait_ended()
    assert collector.sets == [expected]
    assert [s async for s in resolver.updates()] == []


@pytest.mark.parametrize("target", ["static:///", "static:///127.0.0.2", "static:///a:1,b"])
def test_static_resolver_rejects_bad_lists(target: str) -> None:
    with pytest.raises(TargetError):
        resolver_for(target)


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("api.mesh.test:50051", "DnsResolver(dns:///api.mesh.test:50051)"),
        ("dns:///api:1", "DnsResolver(dns:///api:1)"),
        ("dns://127.0.0.1:5300/api:1", "DnsResolver(dns://127.0.0.1:5300/api:1)"),
        ("DNS:///api:1", "DnsResolver(dns:///api:1)"),
    ],
)
def test_resolver_for_dispatches_dns(target: str, text: str) -> None:
    resolver = resolver_for(target)
    assert isinstance(resolver, DnsResolver)
    assert repr(resolver) == text


@pytest.mark.parametrize(
    "target", ["http://api:80", "dns:///api:1?x=1", "dns:///api:1#f", "dns://[::1/api:1"]
)
def test_resolver_for_rejects(target: str) -> None:
    with pytest.raises(TargetError):
        resolver_for(target)
