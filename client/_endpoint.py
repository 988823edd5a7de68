"""One replica address: a small pool of grpc.aio channels, its health, its outlier state.

An :class:`Endpoint` dials its address directly (``Address.grpc_target``), so
grpcio's own resolver and balancer never interfere: discovery and the pick of
a replica happen above grpcio, in ``_pool`` and ``_picker``.

Pool invariants (the cases :meth:`Endpoint._update_pool` handles):

1. At least ``min_channels`` channels are open once the endpoint is used, and
   never more than ``max_channels``.
2. A lease takes the open channel with the fewest calls; an extra channel is
   opened only when every open channel already carries
   ``max_concurrent_per_channel`` calls or more.
3. A channel beyond the first ``min_channels`` that has been idle longer than
   ``idle_timeout`` is closed when a lease ends or at a sweep (``prune``);
   taking a lease never awaits. The first channel carries the health watch and
   stays.
4. A draining endpoint takes no new lease, and closes every channel once its
   last call ends (or after the drain grace).
5. In-flight counts (endpoint and channel) change only there and never go
   negative.

The pool's lists change only in ``_update_pool``, which never awaits (so no
other task sees a half-made change) and returns the channels to close; the
caller closes them afterwards, outside that critical section.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._discovery_backoff import DiscoveryBackoff
from client._picker import PeakEwma
from client._resolver import Address
from client._tasks import cancel_and_wait
from client._tls import ChannelSecurity
from meshdemo.v1 import user_pb2_grpc

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

#: The service name whose health each endpoint watches.
HEALTH_SERVICE_NAME = "meshdemo.v1.UserService"

log = logging.getLogger("meshdemo.client.endpoint")

_SERVING = health_pb2.HealthCheckResponse.SERVING
#: Codes that mean "this replica did not answer": they count towards ejection.
_OUTLIER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: Opens one channel: ``(grpc target, channel options, interceptors) -> channel``.
ChannelFactory = Callable[[str, list[tuple[str, Any]], Sequence[Any]], grpc.aio.Channel]


class EndpointDrainingError(Exception):
    """The endpoint is draining or closed: it takes no new lease.

    Raised only by :meth:`Endpoint.acquire` (and so :meth:`Endpoint.lease`),
    never by a call on a leased channel; a caller that catches it around the
    lease alone knows that nothing was sent and another endpoint may be tried.
    """

    def __init__(self, address: Address) -> None:
        super().__init__(f"{address} is draining: it takes no new calls")
        self.address = address


class EndpointState(enum.Enum):
    """What the client knows about one endpoint, most decisive first."""

    #: Removed from the resolved set: no new calls, closing when idle.
    DRAINING = "DRAINING"
    #: Ejected as an outlier until its ejection time is over.
    EJECTED = "EJECTED"
    #: Not reached: a connection attempt or health watch failed and no answer came since
    #: (the replica is down, or its channel is in TRANSIENT_FAILURE).
    UNREACHABLE = "UNREACHABLE"
    #: Its health service says NOT_SERVING (or does not know the service).
    NOT_SERVING = "NOT_SERVING"
    #: Its health service says SERVING (or has no health service).
    SERVING = "SERVING"
    #: Reached, health not watched.
    READY = "READY"
    #: Never reached yet (first attempt in progress), or the health watch broke and is
    #: on its first reconnect.
    CONNECTING = "CONNECTING"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Channels per endpoint, keepalive and health watching; validated on creation.

    Attributes:
        min_channels: Channels kept open once the endpoint is used (at least 1).
        max_channels: Most channels to one endpoint.
        max_concurrent_per_channel: Calls a channel carries before another one is opened.
        idle_timeout: Seconds an extra channel may stay idle before it is closed.
        keepalive_time: Seconds between client keepalive pings; the server accepts 10 or more.
        keepalive_timeout: Seconds to wait for a ping's answer before the connection is dropped.
        drain_grace: Seconds a removed endpoint's calls get to finish before its channels close.
        health_check: Watch ``grpc.health.v1`` for the user service.
        health_backoff_initial: First delay before the health watch (and the channel's
            connection) is tried again.
        health_backoff_max: Longest delay between two tries; it bounds how long a
            replica that came back stays UNREACHABLE (grpcio's own cap is 120 s).
    """

    min_channels: int = 1
    max_channels: int = 4
    max_concurrent_per_channel: int = 100
    idle_timeout: float = 60.0
    keepalive_time: float = 10.0
    keepalive_timeout: float = 5.0
    drain_grace: float = 5.0
    health_check: bool = True
    health_backoff_initial: float = 0.1
    health_backoff_max: float = 1.0

    def __post_init__(self) -> None:
        _check(self.min_channels >= 1, "min_channels must be at least 1")
        _check(self.max_channels >= self.min_channels, "max_channels must be >= min_channels")
        _check(self.max_concurrent_per_channel >= 1, "max_concurrent_per_channel must be >= 1")
        _check(self.idle_timeout > 0, "idle_timeout must be positive")
        _check(self.keepalive_time >= 10.0, "keepalive_time must be at least 10 s (server minimum)")
        _check(self.keepalive_timeout > 0, "keepalive_timeout must be positive")
        _check(self.drain_grace >= 0, "drain_grace must be 0 or more")
        _check(self.health_backoff_initial > 0, "health_backoff_initial must be positive")
        _check(
            self.health_backoff_max >= self.health_backoff_initial,
            "health_backoff_max must be >= health_backoff_initial",
        )

    def watch_backoff(self) -> DiscoveryBackoff:
        """The health watch's reconnect backoff: doubling from initial up to max, half jitter."""
        return DiscoveryBackoff(
            initial=self.health_backoff_initial,
            multiplier=2.0,
            cap=self.health_backoff_max,
            jitter=0.5,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """grpcio channel arguments for one pooled channel."""
        return [
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Each pooled channel owns its connection: without a local subchannel pool,
            # channels with equal arguments to one address share one connection.
            ("grpc.use_local_subchannel_pool", 1),
            # Retries are ours (another endpoint, a budget); grpcio's would hide failures.
            ("grpc.enable_retries", 0),
            ("grpc.lb_policy_name", "pick_first"),
            # A replica restarted on the same address is reconnected within the cap.
            ("grpc.initial_reconnect_backoff_ms", int(self.health_backoff_initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self.health_backoff_max * 1000)),
        ]


@dataclass(frozen=True, slots=True)
class EjectionConfig:
    """Outlier ejection: consecutive failures eject an endpoint for a growing time.

    Attributes:
        consecutive_failures: Failures in a row (UNAVAILABLE, connection failure, attempt
            timeout) that eject the endpoint.
        base_ejection_time: Seconds of the first ejection; the n-th lasts n times as long.
        max_ejection_time: Cap on one ejection's length.
    """

    consecutive_failures: int = 3
    base_ejection_time: float = 1.0
    max_ejection_time: float = 30.0

    def __post_init__(self) -> None:
        _check(self.consecutive_failures >= 1, "consecutive_failures must be at least 1")
        _check(self.base_ejection_time > 0, "base_ejection_time must be positive")
        _check(
            self.max_ejection_time >= self.base_ejection_time,
            "max_ejection_time must be >= base_ejection_time",
        )

    def ejection_time(self, times_ejected: int) -> float:
        """Seconds the ``times_ejected``-th ejection lasts (1-based)."""
        return min(self.base_ejection_time * times_ejected, self.max_ejection_time)


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


class _PooledChannel:
    """One grpc.aio channel and the calls it carries now."""

    __slots__ = ("channel", "idle_since", "in_flight", "number", "stub")

    def __init__(self, channel: grpc.aio.Channel, number: int, now: float) -> None:
        self.channel = channel
        self.stub = user_pb2_grpc.UserServiceStub(channel)
        self.number = number
        self.in_flight = 0
        self.idle_since = now


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to run calls on one endpoint's channel until the lease ends."""

    endpoint: Endpoint
    channel: grpc.aio.Channel
    stub: user_pb2_grpc.UserServiceAsyncStub
    _pooled: _PooledChannel = field(repr=False, compare=False)


class Endpoint:
    """One replica: a channel pool, a health watch, an in-flight count and an outlier state.

    Implements the picker's ``Candidate`` protocol (``in_flight``, ``is_available``).

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
    ) -> None:
        if channel_factory is not None and credentials is not None:
            raise ValueError("give channel_factory or credentials, not both")
        self.address = address
        self._pool = pool or PoolConfig()
        self._ejection = ejection or EjectionConfig()
        self._interceptors = tuple(interceptors)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._open_channel = channel_factory or _default_factory(credentials)
        self._watch_backoff = self._pool.watch_backoff()
        #: Health watch attempts since the last reply (0 right after a reply).
        self._watch_failures = 0
        self._channels: list[_PooledChannel] = []
        self._opened = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.total_calls = 0
        self.failures = 0
        self.times_ejected = 0
        self._consecutive_failures = 0
        #: Recent answer latency, read by the peak_ewma picker.
        self.latency = PeakEwma(clock=clock)
        self._ejected_until: float | None = None
        self._health = EndpointState.CONNECTING
        self._watch_broken = False
        #: A watch attempt ended without any answer: the replica did not answer at all.
        self._unreachable = False
        self._draining = False
        self._closed = False
        self._watch_task: asyncio.Task[None] | None = None

    # --- the Candidate protocol -----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls running on this endpoint now; never negative."""
        return self._in_flight

    def is_available(self) -> bool:
        """Whether the picker may prefer this endpoint now.

        False while draining, ejected, NOT_SERVING, UNREACHABLE, or while the
        health watch has lost its connection (until it reconnects).
        """
        return not (
            self._draining
            or self._closed
            or self.is_ejected()
            or self._health is EndpointState.NOT_SERVING
            or self._watch_broken
            or self._channel_failed()
        )

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> EndpointState:
        """The most decisive thing known about this endpoint now."""
        if self._draining or self._closed:
            return EndpointState.DRAINING
        if self.is_ejected():
            return EndpointState.EJECTED
        if self._unreachable or self._channel_failed():
            return EndpointState.UNREACHABLE
        if self._watch_broken:
            return EndpointState.CONNECTING
        return self._health

    def _channel_failed(self) -> bool:
        """Whether the primary channel is in TRANSIENT_FAILURE (its last connect failed)."""
        if not self._channels:
            return False
        state = self._channels[0].channel.get_state(try_to_connect=False)
        return state is grpc.ChannelConnectivity.TRANSIENT_FAILURE

    @property
    def channel_count(self) -> int:
        """Channels open now."""
        return len(self._channels)

    @property
    def draining(self) -> bool:
        """Whether the endpoint was removed and takes no new calls."""
        return self._draining or self._closed

    def is_ejected(self) -> bool:
        """Whether an ejection is in force now (re-admission is lazy: by the clock)."""
        return self._ejected_until is not None and self._clock() < self._ejected_until

    def stats(self) -> EndpointStats:
        """A snapshot for the client's stats."""
        return EndpointStats(
            address=str(self.address),
            state=self.state.value,
            channels=len(self._channels),
            in_flight=self._in_flight,
            total_calls=self.total_calls,
            failures=self.failures,
            times_ejected=self.times_ejected,
        )

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.address} {self.state.value} channels={len(self._channels)} "
            f"in_flight={self._in_flight} calls={self.total_calls} failures={self.failures}>"
        )

    # --- outcomes and ejection ------------------------------------------------------------

    def record_success(self, latency: float | None = None) -> None:
        """An attempt on this endpoint got an answer: the failure streak ends.

        Args:
            latency: Seconds the answer took, for the latency estimate the
                peak_ewma picker reads; None for calls whose duration says
                nothing about the replica (streams paced by their reader).
        """
        self._consecutive_failures = 0
        if latency is not None:
            self.latency.observe(latency)

    def record_failure(self, code: grpc.StatusCode | None = None, *, outlier: bool = True) -> None:
        """An attempt failed; outlier failures in a row eject the endpoint.

        Args:
            code: The attempt's status code; None for a connection failure.
            outlier: Whether the failure says the replica is unwell (UNAVAILABLE, a
                per-attempt timeout, a connection failure). Application errors
                (NOT_FOUND, INVALID_ARGUMENT…) are answers: they end the streak.
        """
        self.failures += 1
        if not outlier or (code is not None and code not in _OUTLIER_CODES):
            self._consecutive_failures = 0
            return
        if self.is_ejected():
            return  # Already out; calls that went anyway do not lengthen it.
        self._consecutive_failures += 1
        if self._consecutive_failures >= self._ejection.consecutive_failures:
            self._eject()

    def _eject(self) -> None:
        self.times_ejected += 1
        self._consecutive_failures = 0
        duration = self._ejection.ejection_time(self.times_ejected)
        self._ejected_until = self._clock() + duration
        log.info("ejected %s for %.1f s (ejection %d)", self.address, duration, self.times_ejected)

    # --- leases and the pool --------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take one call's slot on the least busy channel; give it back with :meth:`release`.

        Never awaits, so no cancellation can fall between taking the slot and
        handing over the lease that gives it back.

        Raises:
            EndpointDrainingError: The endpoint is draining or closed (nothing taken).
        """
        pooled, to_close = self._update_pool(acquire=True)
        assert pooled is not None
        assert not to_close  # taking a lease closes nothing (invariant 3)
        return Lease(self, pooled.channel, pooled.stub, pooled)

    async def release(self, lease: Lease) -> None:
        """Give back a slot taken by :meth:`acquire`; exactly once per lease."""
        _, to_close = self._update_pool(release=lease._pooled)
        await _close_all(to_close)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """Hold one call's slot on the least busy channel for the block's duration.

        Raises:
            EndpointDrainingError: The endpoint is draining or closed (on entry only).
        """
        lease = self.acquire()
        try:
            yield lease
        finally:
            await self.release(lease)

    async def prune(self) -> None:
        """Close extra channels idle longer than ``idle_timeout`` (also done on every release)."""
        _, to_close = self._update_pool()
        await _close_all(to_close)

    def _update_pool(
        self,
        *,
        acquire: bool = False,
        release: _PooledChannel | None = None,
        close: bool = False,
    ) -> tuple[_PooledChannel | None, list[_PooledChannel]]:
        """The one place the pool changes; returns (channel leased, channels to close).

        Never awaits: every change below is atomic with respect to other tasks.
        """
        now = self._clock()
        leased = self._take_channel(now) if acquire else None
        if leased is not None:
            return leased, []  # Idle channels are closed on release and by prune(), not here.
        if release is not None:
            self._give_back(release, now)
        if close or (self._draining and self._in_flight == 0):
            to_close, self._channels = self._channels, []
            return leased, to_close
        to_close = self._idle_extras(now)
        self._channels = [c for c in self._channels if c not in to_close]
        return leased, to_close

    def _take_channel(self, now: float) -> _PooledChannel:
        if self._draining or self._closed:
            raise EndpointDrainingError(self.address)
        self._ensure_min_channels(now)
        best = min(self._channels, key=lambda c: c.in_flight)
        full = best.in_flight >= self._pool.max_concurrent_per_channel
        if full and len(self._channels) < self._pool.max_channels:
            best = self._new_channel(now)
        best.in_flight += 1
        self._in_flight += 1
        self.total_calls += 1
        self._idle.clear()
        return best

    def _give_back(self, pooled: _PooledChannel, now: float) -> None:
        pooled.in_flight -= 1
        self._in_flight -= 1
        assert pooled.in_flight >= 0, f"channel in-flight went negative on {self.address}"
        assert self._in_flight >= 0, f"endpoint in-flight went negative on {self.address}"
        if pooled.in_flight == 0:
            pooled.idle_since = now
        if self._in_flight == 0:
            self._idle.set()

    def _ensure_min_channels(self, now: float) -> None:
        while len(self._channels) < self._pool.min_channels:
            self._new_channel(now)

    def _new_channel(self, now: float) -> _PooledChannel:
        self._opened += 1
        channel = self._open_channel(
            self.address.grpc_target, self._pool.channel_options(), self._interceptors
        )
        pooled = _PooledChannel(channel, self._opened, now)
        self._channels.append(pooled)
        return pooled

    def _idle_extras(self, now: float) -> list[_PooledChannel]:
        extras = self._channels[self._pool.min_channels :]
        timeout = self._pool.idle_timeout
        return [c for c in extras if c.in_flight == 0 and now - c.idle_since > timeout]

    def _primary_channel(self) -> grpc.aio.Channel:
        self._ensure_min_channels(self._clock())
        return self._channels[0].channel

    # --- health ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching health (needs a running event loop); idempotent."""
        if self._watch_task is not None or self._closed:
            return
        if not self._pool.health_check:
            self._health = EndpointState.READY
            return
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch_health(), name=f"health-watch {self.address}"
        )

    async def _watch_health(self) -> None:
        # A watch that got answers and then broke leaves the endpoint CONNECTING (the
        # replica may just have closed an old connection); an attempt that got no
        # answer at all makes it UNREACHABLE until an answer comes.
        # Backoff invariant: the n-th reconnect since the last reply waits
        # ``watch_backoff().delay(n)``: a reply resets n, so a watch that keeps
        # answering between breaks always reconnects after the initial delay,
        # and the delay never exceeds health_backoff_max however many breaks.
        while not (self._closed or self._draining):
            answered = [False]
            try:
                await self._watch_once(answered)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._set_health(EndpointState.SERVING)  # No health service: assume serving.
                    return
                self._watch_broken = True
                self._unreachable = not answered[0]
                log.debug("health watch of %s failed: %s", self.address, err.code())
            self._watch_failures += 1
            await self._sleep(self._watch_backoff.delay(self._watch_failures, self._rng.random))

    async def _watch_once(self, answered: list[bool]) -> None:
        stub = health_pb2_grpc.HealthStub(self._primary_channel())
        call = stub.Watch(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE_NAME))
        try:
            async for reply in call:
                answered[0] = True
                self._watch_failures = 0
                self._watch_broken = self._unreachable = False
                serving = reply.status == _SERVING
                self._set_health(EndpointState.SERVING if serving else EndpointState.NOT_SERVING)
        finally:
            call.cancel()

    def _set_health(self, health: EndpointState) -> None:
        if health is not self._health:
            log.info("%s is %s", self.address, health.value)
        self._health = health

    # --- shutdown -------------------------------------------------------------------------

    async def drain(self, grace: float | None = None) -> None:
        """Take no new calls; close the channels when the last call ends or after ``grace``.

        Args:
            grace: Seconds in-flight calls get; None uses ``PoolConfig.drain_grace``.
        """
        self._draining = True
        await self._stop_watch()
        grace = self._pool.drain_grace if grace is None else grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        await self.close()

    async def close(self) -> None:
        """Stop the health watch and close every channel now (running calls are cancelled)."""
        self._closed = True
        await self._stop_watch()
        _, to_close = self._update_pool(close=True)
        await _close_all(to_close)

    async def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            await cancel_and_wait(task)


def _default_factory(
    credentials: grpc.ChannelCredentials | ChannelSecurity | None,
) -> ChannelFactory:
    """Opens secure channels with ``credentials``, or insecure ones without."""

    def open_channel(
        target: str, options: list[tuple[str, Any]], interceptors: Sequence[Any]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        if isinstance(credentials, ChannelSecurity):
            # Asked per channel: a new channel picks up rotated files.
            return grpc.aio.secure_channel(
                target,
                credentials.channel_credentials(),
                options=[*options, *credentials.channel_options()],
                interceptors=interceptors,
            )
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors
        )

    return open_channel


async def _close_all(channels: Sequence[_PooledChannel]) -> None:
    for pooled in channels:
        await pooled.channel.close(grace=None)
