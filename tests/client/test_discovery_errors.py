"""What a caller sees when discovery goes wrong: real DNS server, real replicas, exact messages.

The UNAVAILABLE a caller gets when no endpoint is known names the target and
the resolver's reason (NXDOMAIN, timeout, refused, and which server), never an
internal class name; a bad target names the accepted forms.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from client import (
    TARGET_FORMS,
    Address,
    DnsResolver,
    EndpointSet,
    NoEndpointError,
    NotFoundError,
    PoolConfig,
    TargetError,
    UnavailableError,
    UserClient,
)
from client.cli import build_parser
from client.testing import DnsServer, ManualResolver
from service.testing import admin_token, serve

NAME = "users.mesh.test"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(zone="mesh.test") as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a UDP socket that never answers a query."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_aaaa_nxdomain_still_reaches_every_replica(
    dns_server: DnsServer, store_url: str
) -> None:
    dns_server.rcodes = {"AAAA": "NXDOMAIN"}  # a resolver that wrongly denies the name
    async with serve("127.0.0.2", store_url=store_url) as first:
        port = int(first.address.rsplit(":", 1)[1])
        async with serve("127.0.0.3", store_url=store_url, port=port) as second:
            dns_server.publish(NAME, ["127.0.0.2", "127.0.0.3"])
            target = dns_server.target(NAME, port)
            async with UserClient(target, token=admin_token(), tracing=False) as client:
                user = await client.create_user("Ada", "ada@example.com", 36)
                for _ in range(10):
                    assert await client.get_user(user.id) == user
                listed = sorted(e.address for e in client.stats().endpoints)
                assert listed == sorted([first.address, second.address])
    assert dns_server.count("AAAA") >= 1


async def test_nxdomain_reaches_the_caller_with_its_reason(dns_server: DnsServer) -> None:
    target = dns_server.target(NAME, 50051)
    async with UserClient(target, token=admin_token(), tracing=False) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.get_user("u-1", timeout=1.0)
    assert failed.value.message == (
        f"no endpoint for {target}: {NAME}: NXDOMAIN from {dns_server.address}"
    )
    assert "dns.resolver" not in str(failed.value)


async def test_a_name_with_no_records_says_so(dns_server: DnsServer) -> None:
    dns_server.publish(NAME, [])
    target = dns_server.target(NAME, 50051)
    async with UserClient(target, token=admin_token(), tracing=False) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.get_user("u-1", timeout=1.0)
    assert failed.value.message == (
        f"no endpoint for {target}: {NAME}: no A or AAAA records at {dns_server.address}"
    )


async def test_refused_reaches_the_caller(dns_server: DnsServer) -> None:
    dns_server.rcodes = {"*": "REFUSED"}
    target = dns_server.target(NAME, 50051)
    async with UserClient(target, token=admin_token(), tracing=False) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.get_user("u-1", timeout=1.5)
    assert failed.value.message == (
        f"no endpoint for {target}: {NAME}: refused by {dns_server.address}"
    )


async def test_a_server_that_never_answers_times_out_in_the_message(silent_server: str) -> None:
    target = f"dns://{silent_server}/{NAME}:50051"
    resolver = DnsResolver.from_target(silent_server, f"{NAME}:50051", query_timeout=0.2)
    async with UserClient(target, resolver=resolver, token=admin_token(), tracing=False) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.get_user("u-1", timeout=1.5)
    assert failed.value.message == (
        f"no endpoint for {target}: {NAME}: timed out asking {silent_server}"
    )
    assert "LifetimeTimeout" not in str(failed.value)


async def test_before_any_answer_the_message_says_nothing_is_resolved_yet(
    silent_server: str,
) -> None:
    target = f"dns://{silent_server}/{NAME}:50051"
    async with UserClient(target, token=admin_token(), tracing=False) as client:
        with pytest.raises(UnavailableError) as failed:
            await client.get_user("u-1", timeout=0.3)  # the query's own timeout is 5 s
    assert failed.value.message == f"no endpoint for {target}: no address resolved yet"


class _PredatesLastFailure:
    """A resolver written before ``last_failure`` existed: it has no such attribute."""

    def __init__(self) -> None:
        self.inner = ManualResolver()

    def updates(self) -> AsyncIterator[frozenset[Address]]:
        return self.inner.updates()

    def resolve_now(self) -> None:
        self.inner.resolve_now()

    async def close(self) -> None:
        await self.inner.close()


async def test_an_empty_set_without_a_reason_says_the_resolver_lists_none() -> None:
    resolver = _PredatesLastFailure()  # the set reads last_failure with a default
    assert not hasattr(resolver, "last_failure")
    endpoints = EndpointSet(
        resolver,  # type: ignore[arg-type]  # no last_failure, on purpose
        pool=PoolConfig(health_check=False),
        maintenance_interval=None,
        target="t",
    )
    endpoints.start()
    resolver.inner.publish()
    with pytest.raises(NoEndpointError) as failed:
        await endpoints.wait_pick(max_wait=1)
    assert str(failed.value) == "no endpoint for t: the resolver lists no address"
    assert failed.value.reason == "the resolver lists no address"
    await endpoints.close()


@pytest.mark.parametrize(
    "target",
    ["http://api:80", "dns:///api:x", "static:///", "dns://not-an-ip/api:1", "k8s:///svc"],
)
def test_a_bad_target_names_the_accepted_forms(target: str) -> None:
    with pytest.raises(TargetError) as failed:
        UserClient(target, tracing=False)
    assert str(failed.value).endswith(f"; a target is one of {TARGET_FORMS}")
    assert target in str(failed.value)


def test_the_accepted_forms_are_worded_as_the_cli_help() -> None:
    parser = build_parser({})
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    get = subparsers.choices["get"]
    [option] = [a for a in get._actions if "--target" in a.option_strings]
    assert option.help is not None
    assert TARGET_FORMS in option.help


@pytest.mark.parametrize("hedging", [True, False], ids=["hedged", "retry-loop"])
async def test_a_slow_first_resolution_is_waited_for_within_the_calls_deadline(
    hedging: bool, store_url: str
) -> None:
    # No attempt reaches a replica before discovery has answered, so the wait for the
    # first answer is bounded by the call's deadline, not by one attempt's timeout
    # (GetUser's is 0.5 s: before, the call gave up after its copies' waits, about 1 s,
    # with "no address resolved yet", whatever its own timeout).
    resolver = ManualResolver()
    async with (
        serve("127.0.0.2", store_url=store_url) as replica,
        UserClient(
            "static:///127.0.0.2:1",  # The resolver given decides the addresses.
            resolver=resolver,
            token=admin_token(),
            tracing=False,
            hedging=None if hedging else False,
        ) as client,
    ):
        call = asyncio.ensure_future(client.get_user("no-such-user", timeout=5.0))
        await asyncio.sleep(1.6)  # Three of GetUser's attempt timeouts.
        assert not call.done()
        resolver.publish(replica.address)
        with pytest.raises(NotFoundError):  # The replica's answer: the call reached it.
            await call
        stats = client.stats()
    assert stats.retries == 0
    assert stats.hedges == 0
    # The attempt itself had GetUser's own attempt timeout, from when it was sent.
    [endpoint] = stats.endpoints
    assert endpoint.total_calls == 1
