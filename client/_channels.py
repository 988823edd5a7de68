"""One endpoint's pool of grpc.aio channels, the leases that carry calls on them, and its drain.

Pool invariants (the cases :meth:`ChannelPool._update_pool` handles):

1. At least ``min_channels`` channels are open once the pool is used, and
   never more than ``max_channels``.
2. A lease takes the open channel with the fewest calls; an extra channel is
   opened only when every open channel already carries
   ``max_concurrent_per_channel`` calls or more.
3. A channel beyond the first ``min_channels`` that has been idle longer than
   ``idle_timeout`` is closed when a lease ends or at a sweep (``prune``);
   taking a lease never awaits and closes nothing. The first channel carries
   the health watch and stays.
4. A draining pool takes no new lease, and closes every channel once its
   last call ends (or after the drain grace).
5. In-flight counts (pool and channel) change only there and never go
   negative.
6. With rotating credentials (a ``generation`` callable, see
   ``client._tls``), a sweep that finds channels opened under an older
   generation retires them all: they take no new lease, idle ones close at
   once and busy ones when their last call ends, and fresh channels (a new
   first one among them) replace them.

The pool's lists change only in ``_update_pool``, which never awaits (so no
other task sees a half-made change) and returns the channels to close; the
caller closes them afterwards, outside that critical section.

Hot path: a lease is one object per channel, made when the channel opens and
handed out again for every call on it (it is immutable), and the clock is
read only when a channel opens or becomes idle, or when extra channels exist.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from client._discovery_backoff import DiscoveryBackoff
from client._resolver import Address
from client._tls import ChannelSecurity
from client._validate import check
from meshdemo.v1 import user_pb2_grpc

if TYPE_CHECKING:
    from client._endpoint import Endpoint

__all__ = [
    "ChannelFactory",
    "ChannelPool",
    "EndpointDrainingError",
    "Lease",
    "PoolConfig",
    "await_closing",
    "default_factory",
]

_TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE

#: Opens one channel: ``(grpc target, channel options, interceptors) -> channel``.
ChannelFactory = Callable[[str, list[tuple[str, Any]], Sequence[Any]], grpc.aio.Channel]


class EndpointDrainingError(Exception):
    """The endpoint is draining or closed: it takes no new lease.

    Raised only by ``Endpoint.acquire`` (and so ``Endpoint.lease``), never by a
    call on a leased channel; a caller that catches it around the lease alone
    knows that nothing was sent and another endpoint may be tried.
    """

    def __init__(self, address: Address) -> None:
        super().__init__(f"{address} is draining: it takes no new calls")
        self.address = address


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
        check(self.min_channels >= 1, "min_channels must be at least 1")
        check(self.max_channels >= self.min_channels, "max_channels must be >= min_channels")
        check(self.max_concurrent_per_channel >= 1, "max_concurrent_per_channel must be >= 1")
        check(self.idle_timeout > 0, "idle_timeout must be positive")
        check(self.keepalive_time >= 10.0, "keepalive_time must be at least 10 s (server minimum)")
        check(self.keepalive_timeout > 0, "keepalive_timeout must be positive")
        check(self.drain_grace >= 0, "drain_grace must be 0 or more")
        check(self.health_backoff_initial > 0, "health_backoff_initial must be positive")
        check(
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
            # grpcio 1.85 waits for a keepalive ping's ack this long (default 60 s),
            # whatever keepalive_timeout_ms says: a frozen replica took 70 s to detect.
            ("grpc.http2.ping_timeout_ms", int(self.keepalive_timeout * 1000)),
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


class _PooledChannel:
    """One grpc.aio channel, the calls it carries now, and the lease handed out for it."""

    __slots__ = ("channel", "generation", "idle_since", "in_flight", "lease", "number")

    def __init__(
        self, channel: grpc.aio.Channel, number: int, now: float, owner: Endpoint, generation: int
    ) -> None:
        self.channel = channel
        self.number = number
        self.generation = generation
        self.in_flight = 0
        self.idle_since = now
        self.lease = Lease(owner, channel, user_pb2_grpc.UserServiceStub(channel), self)


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to run calls on one endpoint's channel until the lease ends."""

    endpoint: Endpoint
    channel: grpc.aio.Channel
    stub: user_pb2_grpc.UserServiceAsyncStub
    _pooled: _PooledChannel = field(repr=False, compare=False)


class ChannelPool:
    """The channels to one address, their in-flight counts, and the drain.

    Args:
        address: The replica's address, dialled directly (``Address.grpc_target``).
        config: Pool limits and channel options.
        owner: The endpoint named by every lease.
        open_channel: Opens one channel.
        interceptors: Client interceptors of every channel.
        clock: Monotonic seconds (idle timeouts).
        generation: The credentials' generation (``ChannelSecurity.generation``),
            asked when a channel opens and at every sweep; None when the
            credentials never change.
    """

    def __init__(
        self,
        address: Address,
        config: PoolConfig,
        owner: Endpoint,
        open_channel: ChannelFactory,
        *,
        interceptors: Sequence[Any] = (),
        clock: Callable[[], float],
        generation: Callable[[], int] | None = None,
    ) -> None:
        self._address = address
        self._generation = generation
        self._config = config
        self._owner = owner
        self._open_channel = open_channel
        self._interceptors = tuple(interceptors)
        self._clock = clock
        self._channels: list[_PooledChannel] = []
        #: Channels of an older generation that still carry calls: no new lease.
        self._retiring: list[_PooledChannel] = []
        #: The first channel's grpc channel (read on every pick); None while none is open.
        self._primary: grpc.aio.Channel | None = None
        self._opened = 0
        self.in_flight = 0
        self.total_calls = 0
        #: Set when the last call ends, made only by a drain that has calls to wait for
        #: (so that a lease costs no event).
        self._idle: asyncio.Event | None = None
        #: No new lease: set by :meth:`start_draining` or :meth:`close`, never cleared.
        self.draining = False
        self._closed = False

    # --- reading --------------------------------------------------------------------------

    @property
    def channel_count(self) -> int:
        """Channels open now."""
        return len(self._channels)

    def channel_loads(self) -> list[int]:
        """Calls each open channel carries now, in the order they were opened."""
        return [c.in_flight for c in self._channels]

    def primary_failed(self) -> bool:
        """Whether the first channel is in TRANSIENT_FAILURE (its last connect failed)."""
        primary = self._primary
        if primary is None:
            return False
        return primary.get_state(try_to_connect=False) is _TRANSIENT_FAILURE

    def primary_channel(self) -> grpc.aio.Channel:
        """The first channel (opened now if needed), which carries the health watch."""
        self._ensure_min_channels()
        return self._channels[0].channel

    # --- leases ---------------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take one call's slot on the least busy channel; never awaits.

        Raises:
            EndpointDrainingError: The pool is draining or closed (nothing taken).
        """
        pooled, to_close = self._update_pool(acquire=True)
        assert pooled is not None
        assert not to_close  # taking a lease closes nothing (invariant 3)
        return pooled.lease

    def release(self, lease: Lease) -> Awaitable[None] | None:
        """Give back a slot taken by :meth:`acquire`; exactly once per acquire; never awaits.

        Returns:
            None; or, when this slot's end leaves channels to close (an extra
            channel idle too long, a drained pool's last call), the coroutine
            that closes them, which the caller awaits. Nearly every call ends
            with nothing to close, and then costs no coroutine.
        """
        _, to_close = self._update_pool(release=lease._pooled)
        return _close_all(to_close) if to_close else None

    async def prune(self, *, new_primary: Callable[[], Awaitable[None]] | None = None) -> None:
        """Close extra channels idle longer than ``idle_timeout``; replace stale-credential ones.

        Args:
            new_primary: Awaited when the first channel was replaced, before the
                old one closes (the health watch moves over without a break).
        """
        primary = self._primary
        _, to_close = self._update_pool(rotate=True)
        if new_primary is not None and primary is not None and self._primary is not primary:
            await new_primary()
        await _close_all(to_close)

    # --- drain and close ------------------------------------------------------------------

    def start_draining(self) -> None:
        """Take no new lease from now on; close every channel when the last call ends."""
        self.draining = True

    async def drain(self, grace: float) -> None:
        """Take no new lease; close the channels when the last call ends or after ``grace``."""
        self.start_draining()
        if self.in_flight:  # No new lease from here on: the count only goes down.
            if self._idle is None:
                self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):  # wait_for (3.11) can drop a cancel
                    await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        """Close every channel now (running calls are cancelled)."""
        self.draining = self._closed = True
        _, to_close = self._update_pool(close=True)
        await _close_all(to_close)

    # --- the one place the pool changes -----------------------------------------------------

    def _update_pool(
        self,
        *,
        acquire: bool = False,
        release: _PooledChannel | None = None,
        close: bool = False,
        rotate: bool = False,
    ) -> tuple[_PooledChannel | None, list[_PooledChannel]]:
        """The one place the pool changes; returns (channel leased, channels to close).

        Never awaits: every change below is atomic with respect to other tasks.
        """
        if acquire:
            return self._take_channel(), []  # Idle channels close on release and prune().
        retired: list[_PooledChannel] = []
        if release is not None:
            self._give_back(release)
            if release.in_flight == 0 and release in self._retiring:
                self._retiring.remove(release)
                retired.append(release)  # invariant 6: its last call ended
        if close or (self.draining and self.in_flight == 0):
            to_close = [*self._channels, *self._retiring]
            self._channels, self._retiring, self._primary = [], [], None
            return None, to_close
        if rotate:
            retired += self._retire_stale()
        if len(self._channels) <= self._config.min_channels:
            return None, retired  # No extra channel that could be idle (invariant 3).
        to_close = self._idle_extras(self._clock())
        if to_close:
            self._channels = [c for c in self._channels if c not in to_close]
        return None, retired + to_close

    def _retire_stale(self) -> list[_PooledChannel]:
        """Invariant 6: retire every channel of an older generation; the idle ones to close."""
        if self._generation is None or self.draining or not self._channels:
            return []
        current = self._generation()
        stale = [c for c in self._channels if c.generation < current]
        if not stale:
            return []
        self._channels = [c for c in self._channels if c.generation >= current]
        # The first channel stays the primary (the health watch's); a new one if it was stale.
        self._primary = self._channels[0].channel if self._channels else None
        self._ensure_min_channels()
        self._retiring += [c for c in stale if c.in_flight > 0]
        return [c for c in stale if c.in_flight == 0]

    def _take_channel(self) -> _PooledChannel:
        if self.draining:
            raise EndpointDrainingError(self._address)
        channels = self._channels
        if len(channels) < self._config.min_channels:
            self._ensure_min_channels()
        best = channels[0]
        for pooled in channels:  # Fewest calls, first opened on a tie.
            if pooled.in_flight < best.in_flight:
                best = pooled
        full = best.in_flight >= self._config.max_concurrent_per_channel
        if full and len(channels) < self._config.max_channels:
            best = self._new_channel(self._clock())
        best.in_flight += 1
        self.in_flight += 1
        self.total_calls += 1
        return best

    def _give_back(self, pooled: _PooledChannel) -> None:
        pooled.in_flight -= 1
        self.in_flight -= 1
        assert pooled.in_flight >= 0, f"channel in-flight went negative on {self._address}"
        assert self.in_flight >= 0, f"endpoint in-flight went negative on {self._address}"
        if pooled.in_flight == 0:
            pooled.idle_since = self._clock()
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def _ensure_min_channels(self) -> None:
        while len(self._channels) < self._config.min_channels:
            self._new_channel(self._clock())

    def _new_channel(self, now: float) -> _PooledChannel:
        self._opened += 1
        channel = self._open_channel(
            self._address.grpc_target, self._config.channel_options(), self._interceptors
        )
        # Asked after opening: the factory may just have taken up changed files.
        generation = self._generation() if self._generation is not None else 0
        pooled = _PooledChannel(channel, self._opened, now, self._owner, generation)
        self._channels.append(pooled)
        if self._primary is None:
            self._primary = channel
        return pooled

    def _idle_extras(self, now: float) -> list[_PooledChannel]:
        extras = self._channels[self._config.min_channels :]
        timeout = self._config.idle_timeout
        return [c for c in extras if c.in_flight == 0 and now - c.idle_since > timeout]

    def __repr__(self) -> str:
        return (
            f"<ChannelPool {self._address} channels={len(self._channels)} "
            f"in_flight={self.in_flight} calls={self.total_calls}"
            f"{' draining' if self.draining else ''}>"
        )


def default_factory(
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


async def await_closing(closing: Awaitable[None] | None) -> None:
    """Await what :meth:`ChannelPool.release` handed back, if anything (off the hot path)."""
    if closing is not None:
        await closing


async def _close_all(channels: Sequence[_PooledChannel]) -> None:
    for pooled in channels:
        await pooled.channel.close(grace=None)
