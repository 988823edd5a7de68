"""One replica address: a thin composition of its channel pool, health watch and ejection.

An :class:`Endpoint` dials its address directly (``Address.grpc_target``), so
grpcio's own resolver and balancer never interfere: discovery and the pick of
a replica happen above grpcio, in ``_pool`` and ``_picker``. Each concept has
its own class and module:

- :class:`~client._channels.ChannelPool`: the channels, leases, in-flight
  counts and the drain (``client/_channels.py``);
- :class:`~client._health_watch.HealthWatch`: the ``grpc.health.v1`` Watch
  loop with the shared backoff (``client/_health_watch.py``);
- :class:`~client._ejection.OutlierEjection`: the failure streak and ejection
  deadline (``client/_ejection.py``).

The endpoint combines their states into one :class:`EndpointState`, and takes
every call's result through one door, :meth:`Endpoint.record_outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client._channels import (
    ChannelFactory,
    ChannelPool,
    EndpointDrainingError,
    Lease,
    PoolConfig,
    await_closing,
    default_factory,
)
from client._ejection import EjectionConfig, OutlierEjection
from client._health_watch import HEALTH_SERVICE_NAME, HealthWatch
from client._picker import PeakEwma
from client._resolver import Address
from client._state import EndpointState
from client._tls import ChannelSecurity

__all__ = [
    "HEALTH_SERVICE_NAME",
    "ChannelFactory",
    "EjectionConfig",
    "Endpoint",
    "EndpointDrainingError",
    "EndpointState",
    "EndpointStats",
    "Lease",
    "PoolConfig",
]

_OK = grpc.StatusCode.OK


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of one endpoint for ``UserClient.stats()``."""

    address: str
    state: str
    channels: int
    in_flight: int
    total_calls: int
    failures: int
    times_ejected: int
    #: Hedge copies a later copy beat (docs/hedging.md rule 8): slow answers, not in
    #: ``failures``, though they count towards ejection as outlier failures.
    outruns: int = 0


class Endpoint:
    """One replica: a channel pool, a health watch, an outlier state and a latency estimate.

    Implements the picker's ``Candidate`` protocol (``in_flight``, ``is_available``)
    and its ``LatencyCandidate`` extension (``latency_estimate``).

    Args:
        address: The replica's address, dialled directly.
        pool: Channel pool, keepalive and health settings.
        ejection: Outlier ejection settings.
        interceptors: Client interceptors for every channel (auth, metrics, tracing).
        clock: Monotonic seconds; a seam for ejection and idle tests.
        sleep: Awaitable sleep; a seam for the health watch's backoff.
        rng: Random source of the health watch's backoff jitter.
        channel_factory: Opens a channel to a grpc target; the default opens a
            secure channel with ``credentials``, else an insecure one.
        credentials: Channel credentials (TLS) for every channel, or a
            :class:`client.ChannelSecurity` asked anew for each channel
            (files re-read on change, the name to verify); None for plain text.
        track_latency: Keep the latency estimate; False when no picker reads
            it (``latency_estimate`` then stays 0.0), which spares every answer
            a clock reading and an exponential.

    Raises:
        ValueError: Both ``channel_factory`` and ``credentials`` given (the
            factory would ignore the credentials).
    """

    def __init__(
        self,
        address: Address,
        *,
        pool: PoolConfig | None = None,
        ejection: EjectionConfig | None = None,
        interceptors: Sequence[Any] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        channel_factory: ChannelFactory | None = None,
        credentials: grpc.ChannelCredentials | ChannelSecurity | None = None,
        track_latency: bool = True,
    ) -> None:
        if channel_factory is not None and credentials is not None:
            raise ValueError("give channel_factory or credentials, not both")
        self.address = address
        config = pool or PoolConfig()
        self._drain_grace = config.drain_grace
        self._channels = ChannelPool(
            address,
            config,
            self,
            channel_factory or default_factory(credentials),
            interceptors=interceptors,
            clock=clock,
            # Rotating TLS files: channels of older credentials are replaced at sweeps.
            generation=credentials.generation if isinstance(credentials, ChannelSecurity) else None,
        )
        self._watch = HealthWatch(
            str(address),
            self._channels.primary_channel,
            config.watch_backoff(),
            enabled=config.health_check,
            sleep=sleep,
            rng=rng,
        )
        self._ejection = OutlierEjection(ejection or EjectionConfig(), clock, name=str(address))
        # The pool's own methods, bound once: a lease taken and given back per call
        # costs no frame of the endpoint's.
        #: Take one call's slot on the least busy channel and return its :class:`Lease`;
        #: never awaits, so no cancellation falls between taking the slot and handing
        #: over the lease. Raises EndpointDrainingError when draining or closed
        #: (nothing taken).
        self.acquire: Callable[[], Lease] = self._channels.acquire
        #: Give back a slot taken by ``acquire``, exactly once per acquire; never awaits.
        #: Returns None, or a coroutine closing channels that are done with, to await.
        self.release: Callable[[Lease], Awaitable[None] | None] = self._channels.release
        #: Recent answer latency, for the peak_ewma picker; None when no picker reads it.
        self._latency = PeakEwma(clock=clock) if track_latency else None
        #: Failed attempts, whatever their kind.
        self.failures = 0
        #: Hedge copies outrun by a later copy (not failures; see record_outcome).
        self.outruns = 0

    # --- the Candidate protocol -----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls running on this endpoint now; never negative."""
        return self._channels.in_flight

    def is_available(self) -> bool:
        """Whether the picker may prefer this endpoint now.

        False while draining, ejected, NOT_SERVING, UNREACHABLE, or while the
        health watch has lost its connection (until it reconnects).
        """
        return not (
            self._channels.draining
            or not self._watch.available
            or self._ejection.is_ejected()
            or self._channels.primary_failed()
        )

    def latency_estimate(self) -> float:
        """Recent answer latency in seconds (peak EWMA; 0.0 before any sample, or untracked)."""
        return 0.0 if self._latency is None else self._latency.value()

    # --- outcomes -------------------------------------------------------------------------

    def record_outcome(
        self,
        code: grpc.StatusCode | None,
        latency: float | None = None,
        *,
        outlier: bool = True,
        outrun: bool = False,
    ) -> None:
        """The one way in for an attempt's result on this endpoint.

        Args:
            code: ``OK`` for an answer; the status code of a failed attempt;
                None for a connection failure.
            latency: Seconds the attempt took, for the latency estimate the
                peak_ewma picker reads; None when its duration says nothing
                about the replica (a stream paced by its reader, a failure
                cut by the caller's deadline).
            outlier: For a failure: whether it says the replica is unwell
                (UNAVAILABLE, a per-attempt timeout, a connection failure).
                Application errors (NOT_FOUND, INVALID_ARGUMENT…) are answers:
                they end the failure streak.
            outrun: A hedge copy that a later copy beat (docs/hedging.md rule 8):
                counted in ``outruns``, not ``failures`` (no call failed), while
                ``code`` and ``outlier`` feed the ejection as for any attempt.
        """
        if latency is not None and self._latency is not None:
            self._latency.observe(latency)
        if outrun:
            self.outruns += 1
        elif code is not _OK:
            self.failures += 1
        self._ejection.record(code, outlier=outlier)

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> EndpointState:
        """The most decisive thing known about this endpoint now."""
        if self._channels.draining:
            return EndpointState.DRAINING
        if self._ejection.is_ejected():
            return EndpointState.EJECTED
        if self._channels.primary_failed():
            return EndpointState.UNREACHABLE
        return self._watch.state

    @property
    def channel_count(self) -> int:
        """Channels open now."""
        return self._channels.channel_count

    @property
    def draining(self) -> bool:
        """Whether the endpoint was removed (or closed) and takes no new calls."""
        return self._channels.draining

    @property
    def total_calls(self) -> int:
        """Leases taken since the endpoint was made."""
        return self._channels.total_calls

    @property
    def times_ejected(self) -> int:
        """Ejections so far."""
        return self._ejection.times_ejected

    def is_ejected(self) -> bool:
        """Whether an ejection is in force now (re-admission is lazy: by the clock)."""
        return self._ejection.is_ejected()

    def stats(self) -> EndpointStats:
        """A snapshot for the client's stats."""
        return EndpointStats(
            address=str(self.address),
            state=self.state.value,
            channels=self._channels.channel_count,
            in_flight=self._channels.in_flight,
            total_calls=self._channels.total_calls,
            failures=self.failures,
            times_ejected=self._ejection.times_ejected,
            outruns=self.outruns,
        )

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.address} {self.state.value} channels={self.channel_count} "
            f"in_flight={self.in_flight} calls={self.total_calls} failures={self.failures}>"
        )

    # --- leases ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """Hold one call's slot on the least busy channel for the block's duration.

        Raises:
            EndpointDrainingError: The endpoint is draining or closed (on entry only).
        """
        lease = self._channels.acquire()
        try:
            yield lease
        finally:
            await await_closing(self._channels.release(lease))

    async def prune(self) -> None:
        """Close extra channels idle longer than ``idle_timeout`` (also done on every release),
        and replace the channels of credentials whose files changed (the health watch first)."""
        await self._channels.prune(new_primary=self._watch.restart)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching health (needs a running event loop); idempotent."""
        if not self._channels.draining:
            self._watch.start()

    async def drain(self, grace: float | None = None) -> None:
        """Take no new calls; close the channels when the last call ends or after ``grace``.

        Args:
            grace: Seconds in-flight calls get; None uses ``PoolConfig.drain_grace``.
        """
        self._channels.start_draining()
        await self._watch.stop()
        await self._channels.drain(self._drain_grace if grace is None else grace)

    async def close(self) -> None:
        """Stop the health watch and close every channel now (running calls are cancelled)."""
        self._channels.start_draining()
        await self._watch.stop()
        await self._channels.close()
