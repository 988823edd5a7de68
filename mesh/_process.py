"""Child processes that die with the supervisor, and their log files.

No orphans, even when the supervisor is killed with SIGKILL: on Linux each
child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``),
set between fork and exec. The signal is tied to the thread that forked, so
children are always spawned from the event loop's thread, which lives as
long as the supervisor. Elsewhere (macOS) no such call exists; ``mesh down``
and Ctrl-C still stop everything, and the docs say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Child", "LogSink", "parent_death_supported", "spawn"]

_PR_SET_PDEATHSIG = 1
# Rotate a replica's log past this size so a long `mesh up` never fills the disk.
_MAX_LOG_BYTES = 20 * 1024 * 1024


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Resolved once in the parent: the child, between fork and exec, only calls it.
_PRCTL = _load_prctl()


def parent_death_supported() -> bool:
    """Whether children are killed by the kernel when the supervisor dies."""
    return _PRCTL is not None


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        assert _PRCTL is not None
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died before the call above: nobody would signal us.
            os._exit(1)

    return preexec


class LogSink:
    """Appends a child's output lines to a file, rotating it past a size limit."""

    def __init__(self, path: Path, max_bytes: int = _MAX_LOG_BYTES) -> None:
        self.path = path
        self._max = max_bytes
        self._out: TextIO | None = None

    def write(self, line: str) -> None:
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- kept open
        self._out.write(line if line.endswith("\n") else line + "\n")
        self._out.flush()
        if self._out.tell() > self._max:
            self._out.close()
            self._out = None
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class Child:
    """One running child process; its output goes to a sink and to ``on_line``."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        sink: LogSink,
        on_line: Callable[[dict[str, Any]], None],
    ) -> None:
        self.process = process
        self._sink = sink
        self._on_line = on_line
        self._reader = asyncio.create_task(self._read(), name=f"log-reader-{process.pid}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` if the process still runs."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait(self) -> int:
        """The exit code, once the process ended and its output was read to the end."""
        code = await self.process.wait()
        await self._reader
        return code

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                text = raw.decode(errors="replace").rstrip("\n")
                self._sink.write(text)
                self._on_line(_parse(text))
        finally:
            self._sink.close()


def _parse(text: str) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except ValueError:
        return {"message": text}
    return line if isinstance(line, dict) else {"message": text}


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: LogSink,
    on_line: Callable[[dict[str, Any]], None],
) -> Child:
    """Start ``argv`` with ``env``; stdout and stderr go to ``log`` and ``on_line``."""
    preexec = _die_with_parent(os.getpid()) if _PRCTL is not None else None
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=preexec,
        start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
    )
    return Child(process, log, on_line)
