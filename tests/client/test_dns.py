"""UserClient over ``dns://127.0.0.1:<port>/name:port``: a real dnslib server publishes replicas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client import UserClient
from service.testing import admin_token, serve
from tests.client.helpers import eventually
from tests.resolvers.helpers import DnsTestServer, Zone

NAME = "users.mesh.test."


@pytest.fixture
def zone() -> Zone:
    return Zone()


@pytest.fixture
def dns_server(zone: Zone) -> Iterator[DnsTestServer]:
    server = DnsTestServer(zone)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_replicas_published_in_dns_share_the_calls(
    zone: Zone, dns_server: DnsTestServer, store_url: str
) -> None:
    async with serve("127.0.0.2", store_url=store_url) as first:
        port = int(first.address.rsplit(":", 1)[1])
        # The same (ephemeral, already bound once) port on a second loopback address.
        async with serve("127.0.0.3", store_url=store_url, port=port) as second:
            zone.set(NAME, a=["127.0.0.2"])
            target = f"dns://127.0.0.1:{dns_server.port}/{NAME}:{port}"
            async with UserClient(target, token=admin_token(), tracing=False) as client:
                user = await client.create_user("Dee", "dee@example.com", 30)
                assert [e.address for e in client.stats().endpoints] == [first.address]
                zone.set(NAME, a=["127.0.0.2", "127.0.0.3"])  # Scale up; the TTL is 1 s.
                await eventually(lambda: len(client.endpoints.endpoints) == 2, within=10)
                for _ in range(20):
                    assert await client.get_user(user.id) == user
                calls = {e.address: e.total_calls for e in client.stats().endpoints}
                assert calls[second.address] > 0
