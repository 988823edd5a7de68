"""The CLI as real processes: ``python -m client``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping

from client.cli import EXIT_OK, EXIT_RPC
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
