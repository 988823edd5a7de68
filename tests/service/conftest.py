"""Fixtures: a real replica on 127.0.0.1 port 0 and a real channel to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshdemo.v1 import user_pb2_grpc
from service.testing import InProcessServer, admin_token, reader_token, serve


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    async with serve("127.0.0.1") as running:
        yield running


@pytest.fixture
async def channel(server: InProcessServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> user_pb2_grpc.UserServiceAsyncStub:
    return user_pb2_grpc.UserServiceStub(channel)


@pytest.fixture
def admin() -> tuple[tuple[str, str], ...]:
    """Call metadata of an admin."""
    return (("authorization", f"Bearer {admin_token()}"),)


@pytest.fixture
def reader() -> tuple[tuple[str, str], ...]:
    """Call metadata of a caller without write rights."""
    return (("authorization", f"Bearer {reader_token()}"),)
