"""Fixtures for the resolver tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.testing import DnsServer, FakeClock
from tests.resolvers.helpers import ZONE


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    # A long negative TTL, so that the NODATA answer to AAAA never shortens the
    # A record's TTL in the resolver's refresh wait (the TTL tests count on it).
    with DnsServer(zone=ZONE, negative_ttl=3600) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
