"""Test helpers for the user service: real replicas, in-process or as processes.

Public so that the client's tests, benchmarks and the local mesh start
replicas the same way. Everything binds port 0 on a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import TracerProvider

from service.config import ServiceConfig
from service.health import SERVICE_NAME, HealthReporter
from service.server import Replica, start_replica

__all__ = [
    "TEST_SECRET",
    "InProcessServer",
    "ReplicaProcess",
    "admin_token",
    "reader_token",
    "serve",
    "wait_serving",
]

#: The JWT secret every test replica uses.
TEST_SECRET = "meshdemo-test-secret-not-for-production"


def _token(roles: Sequence[str], sub: str) -> str:
    from service.auth import mint_token

    return mint_token(TEST_SECRET, sub, list(roles), 3600)


def admin_token(sub: str = "test-admin") -> str:
    """A valid token with the admin role, signed with TEST_SECRET."""
    return _token(["admin"], sub)


def reader_token(sub: str = "test-reader") -> str:
    """A valid token without write rights."""
    return _token(["user"], sub)


@dataclass
class InProcessServer:
    """A replica running in the test's own event loop."""

    replica: Replica

    @property
    def address(self) -> str:
        """``host:port`` as bound."""
        return self.replica.address

    @property
    def health(self) -> HealthReporter:
        """The health reporter (probe, graceful shutdown)."""
        return self.replica.health

    async def set_serving(self, serving: bool) -> None:
        """Force the published health status (for tests of health-aware clients)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.replica.health.stop()
        for name in ("", SERVICE_NAME):
            await self.replica.health.servicer.set(name, status)

    async def stop(self, grace: float | None = 0) -> None:
        """Stop at once (no drain), giving in-flight calls ``grace`` seconds."""
        self.replica.config = replace(self.replica.config, shutdown_grace=grace or 0.0)
        await self.replica.shutdown(drain_delay=0)


@contextlib.asynccontextmanager
async def serve(
    host: str = "127.0.0.1",
    *,
    store_url: str | None = None,
    tracer_provider: TracerProvider | None = None,
    **overrides: Any,
) -> AsyncIterator[InProcessServer]:
    """Run a replica on ``host`` port 0 with auth on (TEST_SECRET) until the block ends.

    Without ``store_url`` the replica gets its own SQLite file in a temporary
    directory, removed afterwards. ``overrides`` are ServiceConfig fields.
    """
    with tempfile.TemporaryDirectory(prefix="meshdemo-") as tmp:
        settings: dict[str, Any] = {
            "host": host,
            "port": 0,
            "metrics_port": -1,
            "store": store_url or f"sqlite:///{Path(tmp) / 'users.db'}",
            "auth_secret": TEST_SECRET,
            "drain_delay": 0.0,
            "shutdown_grace": 1.0,
            "replica_name": f"test-{host}",
            "health_interval": 0.5,
        }
        settings.update(overrides)
        replica = await start_replica(ServiceConfig(**settings), tracer_provider=tracer_provider)
        server = InProcessServer(replica)
        try:
            yield server
        finally:
            await replica.shutdown(drain_delay=0)


async def wait_serving(address: str, timeout: float = 10.0) -> None:
    """Return once ``address`` reports SERVING for the user service."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{address} not SERVING within {timeout} s")
            await asyncio.sleep(0.05)


class ReplicaProcess:
    """A real ``python -m service`` subprocess on one loopback address.

    Its stdout (JSON log lines) is read continuously so the pipe never fills;
    the lines are kept in ``logs``.
    """

    def __init__(
        self,
        host: str,
        *,
        store_url: str,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.store_url = store_url
        self.env = dict(env or {})
        self.args = tuple(args)
        self.address = ""
        self.metrics_port: int | None = None
        self.logs: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._bound: asyncio.Future[dict[str, Any]] | None = None

    @property
    def pid(self) -> int:
        """The process id (after start)."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    async def start(self, timeout: float = 20.0) -> str:
        """Start the process; return its bound address once it is SERVING."""
        env = {
            **os.environ,
            "MESH_AUTH_SECRET": TEST_SECRET,
            "MESH_DRAIN_DELAY": "0",
            "MESH_METRICS_PORT": "-1",
            "MESH_REPLICA_NAME": f"replica-{self.host}",
            "MESH_HEALTH_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = [
            sys.executable,
            "-m",
            "service",
            "--host",
            self.host,
            "--port",
            "0",
            "--store",
            self.store_url,
            *self.args,
        ]
        self._bound = asyncio.get_running_loop().create_future()
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read_logs(self._proc))
        try:
            serving = await asyncio.wait_for(asyncio.shield(self._bound), timeout)
            self.address = serving["address"]
            self.metrics_port = serving.get("metrics_port")
            await wait_serving(self.address, timeout)
        except BaseException:
            await self.close()
            raise
        return self.address

    async def _read_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.decode(errors="replace").rstrip()}
            self.logs.append(line)
            if line.get("message") == "serving" and self._bound and not self._bound.done():
                self._bound.set_result(line)
        if self._bound and not self._bound.done():
            tail = "\n".join(str(entry) for entry in self.logs[-10:])
            self._bound.set_exception(RuntimeError(f"replica exited before serving:\n{tail}"))

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the replica vanishes without a goodbye."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the graceful exit; the exit code."""
        assert self._proc is not None, "not started"
        self._signal(signal.SIGTERM)
        return await asyncio.wait_for(self._proc.wait(), timeout)

    async def close(self) -> None:
        """Make sure the process is gone (idempotent); never leaves it stopped."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def __aenter__(self) -> ReplicaProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
