"""Child processes that die with the supervisor, and their log files.

No orphans, even when the supervisor is killed with SIGKILL: on Linux each
child first runs a few lines of Python (:data:`_GUARD`, without ``site``) that
ask the kernel for SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), check
that the parent is still the supervisor, then ``exec`` the real command under
the same pid. Nothing runs between fork and exec in the supervisor's own
image: a Python ``preexec_fn`` there, in a process with gRPC's and the DNS
server's threads, crashed the child now and then. The signal is tied to the
thread that forked, so children are spawned from the event loop's thread,
which lives as long as the supervisor. Elsewhere (macOS) no such call exists;
``mesh down`` and Ctrl-C still stop everything, and the docs say so.
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

__all__ = ["Child", "LogSink", "guarded", "parent_death_supported", "spawn"]

_PR_SET_PDEATHSIG = 1
# Rotate a replica's log past this size so a long `mesh up` never fills the disk.
_MAX_LOG_BYTES = 20 * 1024 * 1024


#: Run as ``python -S -c _GUARD PARENT_PID PROGRAM ARGS...``: die with the parent, then exec.
_GUARD = (
    "import ctypes, os, sys\n"
    f"if ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, 9, 0, 0, 0) != 0:\n"
    "    sys.exit('cannot set the parent death signal')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the supervisor died before prctl: nobody would signal us\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _libc_has_prctl() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "prctl")
    except OSError:
        return False


_PARENT_DEATH = _libc_has_prctl()


def parent_death_supported() -> bool:
    """Whether children are killed by the kernel when the supervisor dies."""
    return _PARENT_DEATH


def guarded(argv: Sequence[str]) -> list[str]:
    """``argv`` behind the guard that kills it with the supervisor (as is elsewhere)."""
    if not _PARENT_DEATH:
        return list(argv)
    return [sys.executable, "-S", "-c", _GUARD, str(os.getpid()), *argv]


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
    process = await asyncio.create_subprocess_exec(
        *guarded(argv),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
    )
    return Child(process, log, on_line)
