"""Fixtures for the resolver tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.resolvers.helpers import DnsTestServer, ManualClock, Zone


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


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
