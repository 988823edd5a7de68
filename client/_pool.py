"""The endpoint set: one :class:`Endpoint` per resolved address, kept in step with a Resolver.

The set consumes ``resolver.updates()``: a new address gets an endpoint (its
health watch starts at once), a removed one is DRAINED (no new calls; its
channels close when its calls finish or after the drain grace). When a call
fails with UNAVAILABLE, the set asks the resolver to re-resolve soon.

Invariant: ``_active`` holds exactly one endpoint per address of the last
resolved set; it changes only in :meth:`EndpointSet._apply`, which never
awaits and returns the endpoints to drain, drained afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import grpc

from client._endpoint import EjectionConfig, Endpoint, EndpointStats, PoolConfig
from client._picker import Picker, make_picker, reads_latency
from client._resolver import Address, Resolver
from client._tasks import cancel_and_wait
from client._tls import ChannelSecurity

__all__ = ["EndpointSet", "NoEndpointError"]

log = logging.getLogger("meshdemo.client.pool")


class NoEndpointError(Exception):
    """No endpoint is known (the resolver has published none in time).

    The message names the target and why nothing is known, e.g. ``no endpoint
    for dns://127.0.0.1:5353/users.x:50051: users.x: NXDOMAIN from
    127.0.0.1:5353``; ``reason`` is the part after the target.
    """

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"no endpoint for {target}: {reason}")
        self.target = target
        self.reason = reason


class EndpointSet:
    """Every endpoint of one target, the picker over them, and discovery.

    Args:
        resolver: Publishes the address set; the set owns it and closes it.
        picker: A picker name (see ``client._picker.PICKERS``) or a Picker.
        pool: Channel pool settings of every endpoint.
        ejection: Outlier ejection settings of every endpoint.
        interceptors: Client interceptors of every channel.
        clock: Monotonic seconds, shared with the endpoints.
        sleep: Awaitable sleep (health watch backoff), shared with the endpoints.
        rng: Random source for the picker and backoff jitter.
        maintenance_interval: Seconds between idle-channel sweeps; None never sweeps
            (channels are still pruned on every lease).
        target: How messages name the target; ``str(resolver)`` when None (the
            built-in DNS and static resolvers print their canonical target).
        credentials: Channel credentials of every channel (TLS), or a
            :class:`client.ChannelSecurity` asked for each new channel;
            None dials in plain text.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        picker: str | Picker = "least_conn",
        pool: PoolConfig | None = None,
        ejection: EjectionConfig | None = None,
        interceptors: Sequence[Any] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        maintenance_interval: float | None = 5.0,
        target: str | None = None,
        credentials: grpc.ChannelCredentials | ChannelSecurity | None = None,
    ) -> None:
        self._resolver = resolver
        self._target = str(resolver) if target is None else target
        self._credentials = credentials
        self._rng = rng or random.Random()
        self._picker = make_picker(picker, self._rng) if isinstance(picker, str) else picker
        #: Endpoints keep a latency estimate only for a picker that reads it (one per answer).
        self._track_latency = reads_latency(self._picker)
        self._pool = pool or PoolConfig()
        self._ejection = ejection or EjectionConfig()
        self._interceptors = tuple(interceptors)
        self._clock = clock
        self._sleep = sleep
        self._maintenance_interval = maintenance_interval
        self._active: dict[Address, Endpoint] = {}
        #: ``_active``'s endpoints in address order, kept in step by ``_apply`` for the picker.
        self._ordered: list[Endpoint] = []
        self._draining: set[Endpoint] = set()
        self._drain_tasks: set[asyncio.Task[None]] = set()
        self._resolved = asyncio.Event()
        #: Whether the resolver published an address set yet (it may have been empty): what
        #: ``_resolved`` says, read on every pick without a call; both set in ``_apply``.
        self.resolved = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start consuming the resolver (needs a running event loop); idempotent."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._follow_resolver(), name="endpoint-set"))
        if self._maintenance_interval is not None:
            self._tasks.append(loop.create_task(self._maintain(), name="endpoint-sweep"))

    async def close(self) -> None:
        """Stop discovery and close every endpoint, active or draining."""
        self._closed = True
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        await self._resolver.close()
        for task in list(self._drain_tasks):
            task.cancel()
        endpoints = [*self._active.values(), *self._draining]
        self._active.clear()
        self._ordered = []
        self._draining.clear()
        for endpoint in endpoints:
            await endpoint.close()

    async def _follow_resolver(self) -> None:
        try:
            async for addresses in self._resolver.updates():
                self.update(addresses)
        except Exception:  # A broken resolver leaves the last known set in place.
            log.exception(
                "resolver %r failed; keeping %d endpoints", self._resolver, len(self._active)
            )

    async def _maintain(self) -> None:
        assert self._maintenance_interval is not None
        while True:
            await asyncio.sleep(self._maintenance_interval)
            for endpoint in list(self._active.values()):
                await endpoint.prune()

    # --- membership -----------------------------------------------------------------------

    def update(self, addresses: Collection[Address]) -> None:
        """Apply one resolved address set: add new endpoints, drain removed ones."""
        added, removed = self._apply(frozenset(addresses))
        for endpoint in added:
            endpoint.start()
        for endpoint in removed:
            task = asyncio.get_running_loop().create_task(
                self._drain(endpoint), name=f"drain {endpoint.address}"
            )
            self._drain_tasks.add(task)
            task.add_done_callback(self._drain_tasks.discard)
        if added or removed:
            log.info("endpoints now %s", sorted(map(str, self._active)))

    def _apply(self, addresses: frozenset[Address]) -> tuple[list[Endpoint], list[Endpoint]]:
        """The one place membership changes; returns (added, removed). Never awaits."""
        removed = [ep for addr, ep in self._active.items() if addr not in addresses]
        for endpoint in removed:
            del self._active[endpoint.address]
            self._draining.add(endpoint)
        added = [self._new_endpoint(a) for a in sorted(addresses) if a not in self._active]
        for endpoint in added:
            self._active[endpoint.address] = endpoint
        self._ordered = [self._active[a] for a in sorted(self._active)]
        self._resolved.set()
        self.resolved = True
        return added, removed

    def _new_endpoint(self, address: Address) -> Endpoint:
        return Endpoint(
            address,
            pool=self._pool,
            ejection=self._ejection,
            interceptors=self._interceptors,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
            credentials=self._credentials,
            track_latency=self._track_latency,
        )

    async def _drain(self, endpoint: Endpoint) -> None:
        try:
            await endpoint.drain()
        finally:
            self._draining.discard(endpoint)

    # --- picking --------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[Endpoint]:
        """The active endpoints (draining ones left out), in address order."""
        return list(self._ordered)

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The picker's choice among active endpoints; None when there is none."""
        return self._picker.pick(self._ordered, exclude)

    def pick_resolved(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The picker's choice once discovery has resolved; None before, or with no endpoint.

        :meth:`wait_pick` without its coroutine, for the common case where no wait is needed.
        """
        return self._picker.pick(self._ordered, exclude) if self.resolved else None

    async def wait_pick(
        self, exclude: Collection[Endpoint] = (), *, max_wait: float | None = None
    ) -> Endpoint:
        """Pick, waiting (at most ``max_wait`` seconds) for the first resolution if needed.

        Raises:
            NoEndpointError: Still no endpoint after the wait, or after the
                resolver published an empty set; its message says why.
        """
        if not self.resolved:
            self.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait):  # wait_for (3.11) can drop a cancel
                    await self._resolved.wait()
        endpoint = self.pick(exclude)
        if endpoint is None:
            raise NoEndpointError(self._target, self._why_none())
        return endpoint

    def _why_none(self) -> str:
        """Why no endpoint is known: the resolver's own reason when it gives one."""
        # getattr: resolvers written before ``last_failure`` joined the protocol.
        reason: str | None = getattr(self._resolver, "last_failure", None)
        if reason:
            return reason
        if self.resolved:
            return "the resolver lists no address"
        return "no address resolved yet"

    def report_failure(self, endpoint: Endpoint, code: grpc.StatusCode | None) -> None:
        """A call on ``endpoint`` failed with ``code``: ask for re-resolution if unreachable."""
        if code is None or code == grpc.StatusCode.UNAVAILABLE:
            self._resolver.resolve_now()

    # --- stats ----------------------------------------------------------------------------

    def stats(self) -> list[EndpointStats]:
        """A snapshot of every endpoint, active first (address order), then draining ones."""
        draining = sorted(self._draining, key=lambda e: e.address)
        return [e.stats() for e in (*self.endpoints, *draining)]

    def __repr__(self) -> str:
        return (
            f"<EndpointSet active={len(self._active)} draining={len(self._draining)} "
            f"in_flight={sum(e.in_flight for e in self._active.values())}>"
        )
