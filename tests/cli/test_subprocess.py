"""The CLI and the demo as real processes: ``python -m client`` and ``python -m client.demo``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from client._cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_RPC
from service.testing import admin_token
from tests.cli.conftest import Mesh, Result


async def _run(
    *argv: str, env: Mapping[str, str] = {}, stdin: str = "", limit: float = 30
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_cli_process_creates_gets_and_fails_with_exit_codes(mesh: Mesh) -> None:
    env = {"MESH_TARGET": mesh.target, "MESH_TOKEN": admin_token()}
    created = await _run(
        "-m", "client", "create", "--name", "Proc", "--email", "proc@example.com", "--age", "9",
        "--json", env=env,
    )  # fmt: skip
    assert created.code == EXIT_OK, created.err
    user_id = json.loads(created.out)["id"]
    got = await _run("-m", "client", "get", user_id, env=env)
    assert (got.code, f"{user_id}  Proc <proc@example.com>" in got.out) == (EXIT_OK, True)
    missing = await _run("-m", "client", "get", "nobody", env=env)
    assert missing.code == EXIT_RPC
    assert missing.err.startswith("error: NOT_FOUND: ")


async def test_cli_process_token_works_offline() -> None:
    secret = "x" * 40
    result = await _run("-m", "client", "token", env={"MESH_AUTH_SECRET": secret})
    assert result.code == EXIT_OK
    assert result.out.count(".") == 2  # header.claims.signature


@pytest.mark.slow
async def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    result = await _run("-m", "client.demo", env={"TMPDIR": str(tmp_path)}, limit=50)
    assert result.code == EXIT_OK, result.out + result.err
    for expected in ("same user, nothing stored twice: True", "NOT_FOUND", "INVALID_ARGUMENT",
                     "field email", "next page token", "demo-replica at", "SERVING",
                     "replica exited with code 0", "Done"):  # fmt: skip
        assert expected in result.out, expected
    assert os.listdir(tmp_path) == []  # the temporary directory is gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Background jobs may inherit SIGINT ignored; a terminal's Ctrl-C finds Python's default handler.
_AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['client.demo']; runpy.run_module('client.demo', run_name='__main__')"
)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_demo_interrupted_leaves_nothing_behind(
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
    assert not _alive(pid)
    assert os.listdir(tmp_path) == []
