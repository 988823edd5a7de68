"""A listing that had every user it asked for when its stream broke is complete: no retry.

A replica can die after sending a stream's last message and before its status
(a SIGKILL at the wrong moment: the mesh demo's trace of it showed a "retry"
that sent nothing, after a backoff). That moment cannot be hit on purpose with
a real replica, so the server here is a real grpc.aio server on loopback whose
ListUsers is scripted: it streams exactly the page asked for, then fails the
stream with UNAVAILABLE. A stream that breaks one user short is retried from
where it stopped, on the same server.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client import PoolConfig, UserClient
from meshdemo.v1 import user_pb2
from tests.client.helpers import EchoUsers, echo_server

pytestmark = pytest.mark.timeout(20)

_LISTING = "/meshdemo.v1.UserService/ListUsers"


class BreaksAtTheEnd(EchoUsers):
    """ListUsers streams ``short_by`` users fewer than asked for, then UNAVAILABLE; once.

    Later calls stream what is asked for and end OK. Users are ``u-000``, ``u-001``, ...
    from the page token on; each one's token resumes after it.
    """

    def __init__(self, short_by: int = 0) -> None:
        super().__init__("lister")
        self.short_by = short_by
        self.listings: list[user_pb2.ListUsersRequest] = []

    async def ListUsers(self, request: Any, context: Any) -> Any:
        self.listings.append(request)
        start = int(request.page_token or 0)
        broken = len(self.listings) == 1
        count = request.page_size - (self.short_by if broken else 0)
        for n in range(start, start + count):
            yield user_pb2.ListUsersResponse(
                user=user_pb2.User(id=f"u-{n:03d}"), next_page_token=str(n + 1)
            )
        if broken:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)")


def _client(address: str, hedging: bool, provider: TracerProvider | None = None) -> UserClient:
    return UserClient(
        f"static:///{address}",
        token="unused",  # The scripted server checks no token.
        hedging=None if hedging else False,
        pool=PoolConfig(health_check=False),  # It has no health service either.
        tracer_provider=provider,
        tracing=provider is not None,
    )


@pytest.mark.parametrize("hedging", [True, False], ids=["hedged", "retry-loop"])
async def test_a_stream_broken_after_its_last_user_is_not_retried(
    hedging: bool, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    servicer = BreaksAtTheEnd()
    async with echo_server("127.0.0.1", servicer) as address:
        async with _client(address, hedging, provider) as client:
            users = [u.id async for u in client.list_users(page_size=5)]
            stats = client.stats()
    assert users == [f"u-{n:03d}" for n in range(5)]
    assert len(servicer.listings) == 1  # Nothing was left to ask for.
    assert stats.retries == 0
    assert stats.failures == 0
    # The attempt still tells how its stream ended; the logical call has no retry event.
    [attempt] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert attempt.name == _LISTING
    assert attempt.status.status_code is StatusCode.ERROR
    [logical] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.INTERNAL]
    assert [e.name for e in logical.events if e.name == "retry"] == []


@pytest.mark.parametrize("hedging", [True, False], ids=["hedged", "retry-loop"])
async def test_a_stream_broken_one_user_short_resumes_after_the_last_user(hedging: bool) -> None:
    servicer = BreaksAtTheEnd(short_by=1)
    async with echo_server("127.0.0.1", servicer) as address:
        async with _client(address, hedging) as client:
            users = [u.id async for u in client.list_users(page_size=5)]
            stats = client.stats()
    assert users == [f"u-{n:03d}" for n in range(5)]  # No duplicate, no gap.
    first, resumed = servicer.listings
    assert (first.page_size, first.page_token) == (5, "")
    assert (resumed.page_size, resumed.page_token) == (1, "4")  # Only what was left.
    assert stats.retries == 1
    assert stats.failures == 0
