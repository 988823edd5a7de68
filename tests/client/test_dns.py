"""UserClient over ``dns://127.0.0.1:<port>/name:port``: a real dnslib server publishes replicas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client import UserClient
from client.testing import DnsServer, eventually
from service.testing import admin_token, serve

NAME = "users.mesh.test."


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(zone="mesh.test") as server:
        yield server


async def test_replicas_published_in_dns_share_the_calls(
    dns_server: DnsServer, store_url: str
) -> None:
    async with serve("127.0.0.2", store_url=store_url) as first:
        port = int(first.address.rsplit(":", 1)[1])
        # The same (ephemeral, already bound once) port on a second loopback address.
        async with serve("127.0.0.3", store_url=store_url, port=port) as second:
            dns_server.publish(NAME, ["127.0.0.2"])
            target = dns_server.target(NAME, port)
            async with UserClient(target, token=admin_token(), tracing=False) as client:
                user = await client.create_user("Dee", "dee@example.com", 30)
                assert [e.address for e in client.stats().endpoints] == [first.address]
                dns_server.publish(NAME, ["127.0.0.2", "127.0.0.3"])  # Scale up; the TTL is 1 s.
                await eventually(lambda: len(client.endpoints.endpoints) == 2, within=10)
                for _ in range(20):
                    assert await client.get_user(user.id) == user
                calls = {e.address: e.total_calls for e in client.stats().endpoints}
                assert calls[second.address] > 0
