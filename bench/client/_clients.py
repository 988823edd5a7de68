"""The two clients compared: ours (``UserClient``) and grpcio's own balancing (the baseline).

Both dial the same ``dns://127.0.0.1:<port>/users.mesh.test:<port>`` target,
send the same token and the same GetUser request with the same overall
deadline. The baseline is what a grpcio user gets without this project: a
channel with the c-ares resolver (re-resolving at most every second here),
``round_robin`` and grpcio's retry policy for UNAVAILABLE (4 attempts).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import grpc

from client import UserClient
from meshdemo import contract
from meshdemo.v1 import user_pb2, user_pb2_grpc

__all__ = [
    "BASELINE",
    "BASELINE_HEALTHY_ONLY",
    "OURS",
    "OURS_LEAST_CONN",
    "OURS_NO_HEDGING",
    "OURS_PEAK_EWMA",
    "SIDES",
    "BaselineClient",
    "GetUser",
    "baseline_service_config",
    "open_client",
]

OURS = "ours"
#: Ours with the policy named: least_conn (hedging on, as by default).
OURS_LEAST_CONN = "ours_least_conn"
#: Ours with the latency-aware policy (hedging on, as by default).
OURS_PEAK_EWMA = "ours_peak_ewma"
#: Ours with the default policy and hedging off: what hedging itself buys.
OURS_NO_HEDGING = "ours_no_hedging"
BASELINE = "baseline"
#: The baseline dialling only the replicas that are healthy (a static target): what a
#: client that never sent a call to a slow one would see, the floor of a comparison.
BASELINE_HEALTHY_ONLY = "baseline_healthy_only"
#: The two sides of every comparison.
SIDES = (OURS, BASELINE)


class GetUser(Protocol):
    """One logical GetUser with an overall deadline, as either client does it."""

    def __call__(self, user_id: str, timeout: float) -> Awaitable[object]: ...


class HedgeCounts(Protocol):
    """What a side that hedges can tell: hedges sent and won so far (our client's stats)."""

    @property
    def hedges(self) -> int: ...
    @property
    def hedges_won(self) -> int: ...


def hedge_counts(get_user: GetUser) -> HedgeCounts | None:
    """The hedge counts behind ``get_user``, when its side has any (ours: yes)."""
    stats = getattr(get_user, "stats", None)
    return stats() if callable(stats) else None


def baseline_service_config() -> str:
    """grpcio service config: round_robin, and retries of UNAVAILABLE like our defaults."""
    retry = {
        "maxAttempts": 4,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": [{"service": contract.SERVICE_NAME}], "retryPolicy": retry}],
        }
    )


def check_dns_resolver() -> None:
    """Refuse to run a baseline that would ignore the DNS server named in the target.

    grpcio's ``native`` resolver (getaddrinfo) ignores the authority of
    ``dns://server/name``; c-ares (the default) honours it.

    Raises:
        RuntimeError: ``GRPC_DNS_RESOLVER`` asks for another resolver than c-ares.
    """
    chosen = os.environ.get("GRPC_DNS_RESOLVER", "").strip().lower()
    if chosen not in ("", "ares"):
        raise RuntimeError(
            f"GRPC_DNS_RESOLVER={chosen!r} ignores the DNS server in the target; unset it"
        )


class BaselineClient:
    """GetUser over one grpc.aio channel balanced by grpcio (round_robin + retryPolicy)."""

    def __init__(self, target: str, token: str) -> None:
        check_dns_resolver()
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.service_config", baseline_service_config()),
                ("grpc.dns_min_time_between_resolutions_ms", 1000),
                ("grpc.enable_retries", 1),
            ],
        )
        self._stub = user_pb2_grpc.UserServiceStub(self.channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def get_user(self, user_id: str, timeout: float) -> object:
        """One GetUser; grpcio's retries stay inside ``timeout``."""
        request = user_pb2.GetUserRequest(id=user_id)
        reply = await self._stub.GetUser(request, timeout=timeout, metadata=self._metadata)
        return reply.user

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)


class _OurGetUser:
    """Our GetUser, with the client's stats at hand (hedges sent and won)."""

    def __init__(self, client: UserClient) -> None:
        self._client = client
        self.stats = client.stats

    def __call__(self, user_id: str, timeout: float) -> Awaitable[object]:
        # The client's own coroutine, handed back: a wrapper coroutine here would
        # cost our side a frame per call that the baseline's side does not pay.
        return self._client.get_user(user_id, timeout=timeout)


def _ours(target: str, token: str) -> AbstractAsyncContextManager[GetUser]:
    # The defaults a user gets: the default policy, hedging of GetUser, per-attempt
    # timeout, retry budget, no tracing SDK.
    return _user_client(target, token)


def _ours_least_conn(target: str, token: str) -> AbstractAsyncContextManager[GetUser]:
    return _user_client(target, token, policy="least_conn")


def _ours_peak_ewma(target: str, token: str) -> AbstractAsyncContextManager[GetUser]:
    return _user_client(target, token, policy="peak_ewma")


def _ours_no_hedging(target: str, token: str) -> AbstractAsyncContextManager[GetUser]:
    return _user_client(target, token, hedging=False)


@asynccontextmanager
async def _user_client(target: str, token: str, **options: Any) -> AsyncIterator[GetUser]:
    async with UserClient(target, token=token, **options) as client:
        yield _OurGetUser(client)


@asynccontextmanager
async def _baseline(target: str, token: str) -> AsyncIterator[GetUser]:
    client = BaselineClient(target, token)
    try:
        yield client.get_user
    finally:
        await client.close()


_OPENERS: dict[str, Callable[[str, str], AbstractAsyncContextManager[GetUser]]] = {
    OURS: _ours,
    OURS_LEAST_CONN: _ours_least_conn,
    OURS_PEAK_EWMA: _ours_peak_ewma,
    OURS_NO_HEDGING: _ours_no_hedging,
    BASELINE: _baseline,
    BASELINE_HEALTHY_ONLY: _baseline,
}


def open_client(side: str, target: str, token: str) -> AbstractAsyncContextManager[GetUser]:
    """The GetUser of ``side`` (:data:`OURS`, an ``OURS_*`` or :data:`BASELINE`), for the block."""
    try:
        opener = _OPENERS[side]
    except KeyError:
        raise ValueError(f"unknown side {side!r}; use one of {SIDES}") from None
    return opener(target, token)
