"""One replica as Kubernetes runs a pod: started, watched for readiness, restarted.

A :class:`Replica` owns one ``python -m service`` process at a time on its
own loopback address. It reports readiness the way the endpoints controller
sees it: ready while the replica's health (``grpc.health.v1`` Watch on the
user service) says SERVING and no termination was asked for. When the process
exits it is started again: at once when it was killed on request (a deleted
pod, which its ReplicaSet replaces straight away), after a backoff that grows
with consecutive short-lived runs when it exited by itself (a crashing
container, CrashLoopBackOff's shape at a laptop's scale).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._tls import ChannelSecurity
from mesh._process import Child, LogSink, spawn
from service.health import SERVICE_NAME

__all__ = ["Backoff", "Replica", "ReplicaState", "replica_argv"]

_log = logging.getLogger("meshdemo.mesh")
_SERVING = health_pb2.HealthCheckResponse.SERVING


def replica_argv(host: str, port: int) -> list[str]:
    """The command line of one replica: the image's entrypoint, ``python -m service``."""
    return [sys.executable, "-m", "service", "--host", host, "--port", str(port)]


class ReplicaState(enum.Enum):
    """Where one replica stands, as ``mesh status`` shows it."""

    #: The process runs and has not reported SERVING yet.
    STARTING = "STARTING"
    #: Health says SERVING: the replica is in DNS.
    SERVING = "SERVING"
    #: The process runs but its health says NOT_SERVING (its store is down, say).
    NOT_SERVING = "NOT_SERVING"
    #: SIGTERM sent: out of DNS, draining in-flight calls.
    TERMINATING = "TERMINATING"
    #: The process exited; waiting out the backoff before starting it again.
    BACKOFF = "BACKOFF"
    #: Stopped for good (scaled away or the mesh is going down).
    STOPPED = "STOPPED"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a restart: ``initial * 2**(n-1)`` for the n-th short run in a row, capped.

    A run that lasted ``reset_after`` seconds or more counts as healthy: the
    next restart waits ``initial`` again.
    """

    initial: float = 0.5
    maximum: float = 8.0
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.reset_after <= 0:
            raise ValueError("reset_after must be positive")

    def delay(self, short_runs: int) -> float:
        """The wait before the next start after ``short_runs`` consecutive short runs (>= 1)."""
        exponent = min(max(short_runs, 1) - 1, 16)  # 2**16 * initial is past any cap
        return min(self.initial * 2.0**exponent, self.maximum)


class Replica:
    """One pod-like replica: name, address, its current process and its readiness.

    Args:
        name: ``users-0``, ``users-1``, …
        host: The loopback address it binds.
        port: The port it binds (0 only for the first replica of a mesh on port 0).
        env: The full environment of its process.
        log: Where its output lines go.
        on_change: Called (no arguments) whenever state, readiness or pid changes.
        backoff: Restart delays.
        clock: Monotonic seconds.
        security: How the health watch dials a replica serving TLS (the mesh's
            CA, and its client certificate under mutual TLS); None for plain text.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        env: Mapping[str, str],
        log: LogSink,
        on_change: Callable[[], None],
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        security: ChannelSecurity | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.restarts = 0
        self.state = ReplicaState.STARTING
        self.metrics_port: int | None = None
        self.last_exit: int | None = None
        self._env = dict(env)
        self._log = log
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._security = security
        self._child: Child | None = None
        self._serving = False
        self._stopping = False
        self._killed = False  # the current process was killed on request
        self._bound = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- what others read -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` as clients dial it."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The current process's pid, None between processes."""
        return self._child.pid if self._child is not None and self._child.alive else None

    @property
    def ready(self) -> bool:
        """Whether DNS publishes this replica: SERVING and not terminating."""
        return self.state is ReplicaState.SERVING

    def describe(self) -> dict[str, Any]:
        """The replica's row in ``mesh status --json``."""
        return {
            "name": self.name,
            "address": self.address,
            "pid": self.pid,
            "state": self.state.value,
            "restarts": self.restarts,
            "ready": self.ready,
            "metrics": f"{self.host}:{self.metrics_port}" if self.metrics_port else None,
            "last_exit": self.last_exit,
        }

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start supervising: the first process now, restarts as they are needed."""
        self._task = asyncio.create_task(self._supervise(), name=f"replica-{self.name}")

    async def wait_bound(self, timeout: float) -> None:
        """Wait until the first process has bound its port (its ``serving`` log line)."""
        async with asyncio.timeout(timeout):  # wait_for (3.11) can drop a cancel
            await self._bound.wait()

    def kill(self, *, graceful: bool) -> int | None:
        """SIGTERM (drain, then exit) or SIGKILL the current process; the pid signalled."""
        child = self._child
        if child is None or not child.alive:
            return None
        self._killed = True
        if graceful:
            self._set_state(ReplicaState.TERMINATING)
            child.signal(signal.SIGTERM)
            child.signal(signal.SIGCONT)  # a paused process handles the SIGTERM once continued
        else:
            child.signal(signal.SIGKILL)
        return child.pid

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and answers nothing (a stalled pod)."""
        if self._child is not None:
            self._child.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._child is not None:
            self._child.signal(signal.SIGCONT)

    async def stop(self, *, timeout: float) -> None:
        """Stop for good: SIGTERM, SIGKILL after ``timeout`` seconds; no restart."""
        self._stopping = True
        child = self._child
        if child is not None and child.alive:
            self._set_state(ReplicaState.TERMINATING)
            child.signal(signal.SIGCONT)  # a paused process would not see the SIGTERM
            child.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):  # wait_for (3.11) can drop a cancel
                    await asyncio.shield(child.wait())
            except TimeoutError:
                _log.warning("%s did not stop within %.1f s: SIGKILL", self.name, timeout)
                child.signal(signal.SIGKILL)
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(ReplicaState.STOPPED)

    def skip_drain(self) -> None:
        """A second SIGTERM: the replica skips the rest of its drain delay."""
        if self._child is not None:
            self._child.signal(signal.SIGTERM)

    async def _supervise(self) -> None:
        short_runs = 0
        try:
            while not self._stopping:
                started = self._clock()
                code = await self._run_once()
                if self._stopping:
                    return
                lasted = self._clock() - started
                if self._killed:
                    delay = 0.0  # replaced, not crashed: no backoff, and no crash counted
                else:
                    short_runs = 0 if lasted >= self._backoff.reset_after else short_runs + 1
                    delay = self._backoff.delay(short_runs)
                self._killed = False
                _log.info(
                    "%s exited with %s after %.1f s; restart in %.1f s",
                    self.name,
                    code,
                    lasted,
                    delay,
                )
                await asyncio.sleep(delay)
                self.restarts += 1
        finally:
            child = self._child
            if child is not None and child.alive:
                child.signal(signal.SIGKILL)
                await child.wait()

    async def _run_once(self) -> int:
        self._serving = False
        self._set_state(ReplicaState.STARTING)
        child = await spawn(
            replica_argv(self.host, self.port), env=self._env, log=self._log, on_line=self._on_line
        )
        self._child = child
        self._on_change()
        watcher = asyncio.create_task(self._watch_health(child), name=f"health-{self.name}")
        try:
            code = await child.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self.last_exit = code
        self._serving = False
        # Out of DNS the moment the process is gone, as a dead pod's endpoint is.
        self._set_state(ReplicaState.TERMINATING if self._stopping else ReplicaState.BACKOFF)
        return code

    def _on_line(self, line: dict[str, Any]) -> None:
        if line.get("message") != "serving":
            return
        address = str(line.get("address", ""))
        port = address.rpartition(":")[2]
        if port.isdigit():
            self.port = int(port)  # learned once when the mesh runs on port 0
        metrics = line.get("metrics_port")
        self.metrics_port = metrics if isinstance(metrics, int) else None
        self._bound.set()

    # --- readiness --------------------------------------------------------------------------

    async def _watch_health(self, child: Child) -> None:
        """Follow the replica's health until its process ends; readiness follows it."""
        await self._bound.wait()
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        async with self._channel(options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while child.alive:
                try:
                    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                    async for reply in stub.Watch(request, wait_for_ready=True):
                        self._health(reply.status == _SERVING)
                except grpc.aio.AioRpcError:
                    self._health(False)
                await asyncio.sleep(0.1)

    def _channel(self, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        """A channel to the replica: TLS verifies its IP address (the mesh issues IP names)."""
        if self._security is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        return grpc.aio.secure_channel(
            self.address,
            self._security.channel_credentials(),
            options=[*options, *self._security.channel_options()],
        )

    def _health(self, serving: bool) -> None:
        self._serving = serving
        if self.state in (ReplicaState.STARTING, ReplicaState.SERVING, ReplicaState.NOT_SERVING):
            self._set_state(ReplicaState.SERVING if serving else ReplicaState.NOT_SERVING)

    def _set_state(self, state: ReplicaState) -> None:
        if state is ReplicaState.SERVING and not self._serving:
            state = ReplicaState.NOT_SERVING
        if state is not self.state:
            self.state = state
            self._on_change()
