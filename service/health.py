"""Health: the stock grpc.health.v1 aio servicer, driven by store probes.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from grpc_health.v1 import health, health_pb2

from service.store import Store, StoreUnavailable

__all__ = ["SERVICE_NAME", "HealthReporter"]

SERVICE_NAME = "meshdemo.v1.UserService"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

log = logging.getLogger("meshdemo.health")


class _EndableHealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The stock aio servicer whose Watch streams can be ended all at once."""

    def __init__(self) -> None:
        super().__init__()
        self._ending = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self._ending.is_set():
            return
        watch = asyncio.ensure_future(super().Watch(request, context))
        ending = asyncio.ensure_future(self._ending.wait())
        try:
            await asyncio.wait({watch, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, ending):
                task.cancel()
            for task in (watch, ending):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Returning ends the stream with OK: the watcher saw NOT_SERVING already.

    def end_watches(self) -> None:
        self._ending.set()


class HealthReporter:
    """Owns the health servicer and the task that probes the store."""

    def __init__(self, store: Store, *, interval: float, probe_timeout: float = 1.0) -> None:
        self.servicer = _EndableHealthServicer()
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
            await asyncio.wait_for(self._store.ping(), self._probe_timeout)
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
        """Stop probing (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Swallow the probe's cancellation, never our own caller's.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
