"""The one-replica tour as a real process: ``python -m mesh tour`` (the old ``client.demo``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from mesh._state import pid_alive

EXIT_OK = 0
EXIT_INTERRUPTED = 130


async def _run(*argv: str, env: dict[str, str], limit: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_tour_runs_to_the_end(tmp_path: Path) -> None:
    code, out, err = await _run("-m", "mesh", "tour", env={"TMPDIR": str(tmp_path)}, limit=50)
    assert code == EXIT_OK, out + err
    for expected in ("same user, nothing stored twice: True", "NOT_FOUND", "INVALID_ARGUMENT",
                     "field email", "next page token", "demo-replica at", "SERVING",
                     "replica exited with code 0", "Done"):  # fmt: skip
        assert expected in out, expected
    assert os.listdir(tmp_path) == []  # the temporary directory is gone


# Background jobs may inherit SIGINT ignored; a terminal's Ctrl-C finds Python's default handler.
_AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['mesh', 'tour']; runpy.run_module('mesh', run_name='__main__')"
)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_tour_interrupted_leaves_nothing_behind(
    tmp_path: Path, signum: signal.Signals
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _AS_FROM_A_TERMINAL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = b""
        async with asyncio.timeout(30):
            while b"replica pid" not in line:
                line = await proc.stdout.readline()
                assert line, "the demo ended before its replica started"
        pid = int(re.search(rb"replica pid (\d+)", line).group(1))  # type: ignore[union-attr]
        proc.send_signal(signum)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, _ + err
    assert not pid_alive(pid)
    assert os.listdir(tmp_path) == []
