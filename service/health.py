"""Health: a grpc.health.v1 servicer driven by store probes.

The status of both the overall service ("") and ``meshdemo.v1.UserService``
is SERVING only while the store's ``ping()`` passes, which means that reads
and writes work on the store the replica was started with (see the Store
protocol): a SQLite file deleted, replaced or made read-only, or a
PostgreSQL server that is down, turns it NOT_SERVING, and the next passing
probe turns it SERVING again. Each change is logged once with its reason, and
so is a new reason while NOT_SERVING (the file was deleted, then a wrong file
was put in its place). ``enter_graceful_shutdown`` turns
both to NOT_SERVING for good (the first step of the shutdown protocol), and
``end_watches`` ends every open Watch stream with OK once the drain is over:
otherwise each watcher (every client, the local mesh) would hold the server's
``stop(grace)`` for the whole grace period.

The servicer is our own, with the stock one's semantics (Check answers
NOT_FOUND for an unknown service; Watch sends SERVICE_UNKNOWN, then every
change; graceful shutdown makes every status NOT_SERVING for good). The stock
aio servicer holds one lock per service while it writes to each watcher, so
a watcher that stops reading blocks every status change behind it, the
shutdown's NOT_SERVING included (a test replica's teardown hung on it). Here
a status change only sets the new value and wakes the watchers; each watcher
writes on its own, and none can hold up another or the change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshdemo.contract import SERVICE_NAME
from service.store import Store, StoreUnavailable

__all__ = ["SERVICE_NAME", "HealthReporter", "HealthServicer"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

log = logging.getLogger("meshdemo.health")
#: Seconds ``HealthReporter.stop`` waits for a cancelled probe to finish.
_STOP_WAIT = 2.0


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 Check and Watch; ``set`` never waits for a watcher.

    Invariant: every watcher's wake-up queue holds at most one token, so a
    burst of changes costs each watcher one wake-up and one write of the
    latest status (intermediate ones may be skipped, as the stock servicer
    also allows).
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {
            "": _SERVING
        }
        self._watchers: dict[str, set[asyncio.Queue[None]]] = {}
        self._shutting_down = False
        self._ending = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        wake: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        watchers = self._watchers.setdefault(request.service, set())
        watchers.add(wake)
        try:
            sent = None
            while not self._ending:
                status = self._status.get(request.service, _SERVICE_UNKNOWN)
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                await wake.get()
            # Returning ends the stream with OK: the watcher saw NOT_SERVING already.
        finally:
            watchers.discard(wake)
            if not watchers:
                self._watchers.pop(request.service, None)

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        """Publish ``status`` for ``service``; ignored once shutting down (as the stock one)."""
        if not self._shutting_down:
            self._publish(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, for good."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for service in list(self._status):
            self._publish(service, _NOT_SERVING)

    def end_watches(self) -> None:
        """End every Watch stream with OK after its last write, and refuse new ones."""
        self._ending = True
        self._wake_all()

    def _publish(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        self._status[service] = status
        for wake in self._watchers.get(service, ()):
            _nudge(wake)

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for wake in watchers:
                _nudge(wake)


def _nudge(wake: asyncio.Queue[None]) -> None:
    if wake.empty():
        wake.put_nowait(None)


class HealthReporter:
    """Owns the health servicer and the task that probes the store."""

    def __init__(self, store: Store, *, interval: float, probe_timeout: float = 1.0) -> None:
        self.servicer = HealthServicer()
        self._store = store
        self._interval = interval
        self._probe_timeout = probe_timeout
        self._serving: bool | None = None
        self._reason = ""
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False

    @property
    def serving(self) -> bool:
        """Whether the last published status was SERVING."""
        return bool(self._serving)

    async def start(self) -> None:
        """Probe once (so the first status is known), then keep probing in the background."""
        await self.probe()
        self._task = asyncio.create_task(self._run(), name="health-probe")

    async def probe(self) -> bool:
        """Ping the store once and publish the result; returns whether it answered."""
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # lands as the ping answers, and stop() would then not stop the probe loop.
            async with asyncio.timeout(self._probe_timeout):
                await self._store.ping()
        except (StoreUnavailable, TimeoutError, OSError) as exc:
            ok = False
            reason = str(exc) or type(exc).__name__
        else:
            ok, reason = True, ""
        await self._publish(ok, reason)
        return ok

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe()

    async def _publish(self, serving: bool, reason: str) -> None:
        if self._shutting_down:
            return
        if serving == self._serving:
            if not serving and reason != self._reason:
                self._reason = reason
                log.warning("health still NOT_SERVING: %s", reason, extra={"reason": reason})
            return
        self._serving, self._reason = serving, reason
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.servicer.set(name, status)
        if serving:
            log.info("health SERVING")
        else:
            log.warning("health NOT_SERVING: %s", reason, extra={"reason": reason})

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good; later probes change nothing."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self._serving = False
        await self.stop()
        await self.servicer.enter_graceful_shutdown()
        log.info("health NOT_SERVING: shutting down")

    def end_watches(self) -> None:
        """End every open Watch stream (and refuse new ones) with OK; for the end of a drain."""
        self.servicer.end_watches()

    async def stop(self) -> None:
        """Stop probing (idempotent), waiting at most ``_STOP_WAIT`` seconds for the probe.

        A probe stuck in its store must not hold the shutdown: past the wait it
        is left cancelled, and logged.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait never raises the probe's own cancellation; our caller's still reaches us.
        done, _ = await asyncio.wait({task}, timeout=_STOP_WAIT)
        if not done:
            log.warning("health probe did not stop within %.1f s; shutting down anyway", _STOP_WAIT)
            return
        if not task.cancelled() and task.exception() is not None:
            log.warning("health probe had failed", exc_info=task.exception())
