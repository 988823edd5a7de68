"""Benchmark subprocesses: a replica, the bare echo server or the collector.

Each prints one JSON line ``{"message": "serving", "address": ...}`` on
stdout once it listens. A daemon thread reads the pipe from the start: it
parses lines only until that one, then discards them (keeping a short tail
for the report), so a replica logging one JSON line per RPC never blocks on
a full pipe and the benchmark process never parses its access logs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from service.testing import TEST_SECRET

__all__ = ["Spawned", "cpu_seconds", "replica_argv", "replica_env", "rss_mb"]

_TAIL_LINES = 20


def replica_argv(host: str, store_url: str) -> list[str]:
    """``python -m service`` on ``host`` port 0 with ``store_url``."""
    return [sys.executable, "-m", "service", "--host", host, "--port", "0", "--store", store_url]


def replica_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a production-like replica, plus ``extra``.

    Auth on (the test secret), metrics served on an ephemeral port, JSON logs
    at INFO, no drain delay (benchmarks stop replicas at once). Tracing
    variables are scrubbed from the inherited environment so each benchmark
    states its own.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        {
            "MESH_AUTH_SECRET": TEST_SECRET,
            "MESH_DRAIN_DELAY": "0",
            "MESH_METRICS_PORT": "0",
            "MESH_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def rss_mb(pid: int) -> float:
    """Resident memory (``VmRSS``) of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) process ``pid`` has used so far."""
    # /proc/<pid>/stat: the command is in parentheses and may hold spaces;
    # utime and stime are fields 14 and 15, in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Spawned:
    """One subprocess that announces its address on stdout; use ``async with``.

    Args:
        argv: The command.
        env: Its whole environment.
        ready_timeout: Seconds to wait for the ``serving`` line.
        cwd: Working directory (``python -m`` imports from it first).
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        ready_timeout: float = 30.0,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.address = ""
        self.serving: dict[str, Any] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The process id (after :meth:`spawn`)."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    def spawn(self) -> None:
        """Start the process (not waiting for it); ``started_at`` is taken just before."""
        self.started_at = time.perf_counter()
        self._proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="bench-drain", daemon=True
        )
        self._reader.start()

    async def wait_ready(self) -> str:
        """The address from the ``serving`` line; raises if the process ends or is late."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not self._ready.is_set():
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"{self.argv[2]} exited early:\n" + "\n".join(self.tail))
            if loop.time() > deadline:
                raise TimeoutError(f"{self.argv[2]} not serving within {self.ready_timeout} s")
            await asyncio.sleep(0.005)
        return self.address

    async def start(self) -> str:
        """Spawn and wait until it serves; its address."""
        self.spawn()
        try:
            return await self.wait_ready()
        except BaseException:
            await self.stop()
            raise

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.tail.append(raw.decode(errors="replace"))
            if self._ready.is_set():
                continue  # past the serving line: drained, never parsed
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("message") == "serving":
                self.serving = line
                self.address = str(line["address"])
                self._ready.set()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for the exit (SIGKILL past ``timeout``); the exit code. Idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5.0)
        assert proc.stdout is not None
        proc.stdout.close()
        return proc.returncode

    def last_json(self) -> dict[str, Any]:
        """The last JSON object line it printed (after :meth:`stop`: its final report)."""
        for raw in reversed(self.tail):
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                return line
        return {}

    async def __aenter__(self) -> Spawned:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
