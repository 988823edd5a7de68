"""The ``grpc.health.v1`` Watch loop of one endpoint, with the shared discovery backoff.

The watch streams the replica's health on the endpoint's primary channel and
keeps what it learnt: SERVING, NOT_SERVING, or that the stream broke (and
whether any answer came before it broke). It only reports; the endpoint
combines it with its pool and ejection state.

Backoff invariant: the n-th reconnect since the last reply waits
``backoff.delay(n)``. A reply resets n, so a watch that keeps answering
between breaks always reconnects after the initial delay, and the delay never
exceeds the backoff's cap however many breaks (no float overflow).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._discovery_backoff import DiscoveryBackoff
from client._state import EndpointState
from client._tasks import cancel_and_wait
from meshdemo.contract import SERVICE_NAME

__all__ = ["HEALTH_SERVICE_NAME", "HealthWatch"]

#: The service name whose health each endpoint watches.
HEALTH_SERVICE_NAME = SERVICE_NAME

log = logging.getLogger("meshdemo.client.endpoint")

_SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthWatch:
    """Watches one replica's health over a channel the caller provides.

    Args:
        name: How log lines and the task name the endpoint.
        channel: Returns the channel to watch on (called once per watch attempt).
        backoff: Reconnect delays after a broken watch.
        enabled: False: no watch; the endpoint counts as READY once started.
        sleep: Awaitable sleep; the seam for backoff tests.
        rng: Random source of the backoff's jitter.
    """

    def __init__(
        self,
        name: str,
        channel: Callable[[], grpc.aio.Channel],
        backoff: DiscoveryBackoff,
        *,
        enabled: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._name = name
        self._channel = channel
        self._backoff = backoff
        self._enabled = enabled
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._health = EndpointState.CONNECTING
        #: Watch attempts since the last reply (0 right after a reply).
        self._failures = 0
        #: The stream broke; cleared by the next reply.
        self._broken = False
        #: A watch attempt ended without any answer: the replica did not answer at all.
        self._unreachable = False
        #: Whether the replica may take calls as far as health knows (kept in step).
        self.available = True
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> EndpointState:
        """UNREACHABLE, CONNECTING (broken), else the last health seen (or READY unwatched)."""
        if self._unreachable:
            return EndpointState.UNREACHABLE
        if self._broken:
            return EndpointState.CONNECTING
        return self._health

    def start(self) -> None:
        """Start watching (needs a running event loop); idempotent, never after :meth:`stop`."""
        if self._task is not None or self._stopped:
            return
        if not self._enabled:
            self._health = EndpointState.READY  # reached when used; nothing to watch or log
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"health-watch {self._name}"
        )

    async def restart(self) -> None:
        """Watch anew on the channel the caller now provides (its first channel was replaced).

        What was learnt stays until the new stream answers, so the endpoint
        stays available while the watch moves; does nothing unless watching.
        """
        if self._stopped or self._task is None:
            return
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._failures = 0
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"health-watch {self._name}"
        )

    async def stop(self) -> None:
        """Stop watching for good; waits for the loop to end."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        # A watch that got answers and then broke leaves the endpoint CONNECTING (the
        # replica may just have closed an old connection); an attempt that got no
        # answer at all makes it UNREACHABLE until an answer comes.
        while not self._stopped:
            answered = [False]
            try:
                await self._watch_once(answered)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._set_health(EndpointState.SERVING)  # No health service: assume serving.
                    return
                self._set_broken(unreachable=not answered[0])
                log.debug("health watch of %s failed: %s", self._name, err.code())
            self._failures += 1
            await self._sleep(self._backoff.delay(self._failures, self._rng.random))

    async def _watch_once(self, answered: list[bool]) -> None:
        stub = health_pb2_grpc.HealthStub(self._channel())
        call = stub.Watch(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE_NAME))
        try:
            async for reply in call:
                answered[0] = True
                self._failures = 0
                serving = reply.status == _SERVING
                self._set_health(EndpointState.SERVING if serving else EndpointState.NOT_SERVING)
        finally:
            call.cancel()

    def _set_broken(self, *, unreachable: bool) -> None:
        self._broken, self._unreachable = True, unreachable
        self.available = False

    def _set_health(self, health: EndpointState) -> None:
        if health is not self._health:
            log.info("%s is %s", self._name, health.value)
        self._health = health
        self._broken = self._unreachable = False
        self.available = health is not EndpointState.NOT_SERVING

    def __repr__(self) -> str:
        return f"<HealthWatch {self._name} {self.state.value} failures={self._failures}>"
