"""The local mesh with TLS and mutual TLS: replicas SERVING over TLS, clients via `mesh env`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import UnavailableError, UserClient, mint_token
from client._tls import tls_from_env
from mesh._cli import build_parser
from mesh._config import MeshConfig
from mesh._replica import ReplicaState
from tests.mesh.conftest import mesh_config, running_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_a_mutual_tls_mesh_serves_clients_with_its_certificate(tmp_path: Path) -> None:
    async with running_mesh(mesh_config(tmp_path, replicas=2, tls="mutual")) as mesh:
        # The supervisor's own health watch got SERVING over mutual TLS.
        assert [r.state for r in mesh.replicas] == [ReplicaState.SERVING] * 2
        env = mesh.tls_client_env()
        assert set(env) == {
            "MESH_TLS_CA_FILE", "MESH_TLS_CLIENT_CERT_FILE", "MESH_TLS_CLIENT_KEY_FILE"
        }  # fmt: skip
        token = mint_token(mesh.secret, "tls", ["admin"], 600)
        tls = tls_from_env(env)
        async with UserClient(mesh.target, token=token, tls=tls, tracing=False) as client:
            user = await client.create_user("Ola", "ola@example.com", 33)
            assert await client.get_user(user.id) == user
        # Trusting the CA is not enough: the replicas want a client certificate.
        no_cert = tls_from_env({"MESH_TLS_CA_FILE": env["MESH_TLS_CA_FILE"]})
        async with UserClient(
            mesh.target, token=token, tls=no_cert, tracing=False, deadlines={"GetUser": 2.0}
        ) as client:
            with pytest.raises(UnavailableError):
                await client.get_user(user.id)
        status = mesh.status()
        assert status["tls"] == "mutual" and status["tls_client_env"] == env


async def test_a_plain_client_cannot_use_a_tls_mesh(tmp_path: Path) -> None:
    async with running_mesh(mesh_config(tmp_path, replicas=1, tls="on")) as mesh:
        assert set(mesh.tls_client_env()) == {"MESH_TLS_CA_FILE"}
        token = mint_token(mesh.secret, "tls", ["admin"], 600)
        async with UserClient(
            mesh.target, token=token, tracing=False, deadlines={"GetUser": 2.0}
        ) as client:
            with pytest.raises(UnavailableError):
                await client.get_user("u-1")


def test_tls_modes_are_checked_and_the_flags_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="tls must be one of"):
        MeshConfig(state_dir=tmp_path, tls="sometimes")
    parser = build_parser()
    assert parser.parse_args(["up"]).tls == "off"
    assert parser.parse_args(["up", "--tls"]).tls == "on"
    assert parser.parse_args(["up", "--mtls"]).tls == "mutual"
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--tls", "--mtls"])
    assert "not allowed with" in capsys.readouterr().err


@contextlib.asynccontextmanager
async def _mesh_up(state_dir: Path, *args: str) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "up", "--port", "0", "--state-dir", str(state_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(45):
            while b"Ctrl-C drains" not in (line := await process.stdout.readline()):
                assert line, "mesh up ended before it was up"
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


async def test_mesh_up_mtls_then_the_client_cli_through_mesh_env(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with _mesh_up(state, "--mtls", "--replicas", "2"):
        status = await asyncio.to_thread(_run, "mesh", "status", "--state-dir", str(state))
        assert "tls     mutual" in status.stdout
        assert status.stdout.count("SERVING") == 2, status.stdout
        line = (await asyncio.to_thread(_run, "mesh", "env", "--state-dir", str(state))).stdout
        exported = dict(part.split("=", 1) for part in shlex.split(line.strip())[1:])
        assert exported["MESH_TLS_CA_FILE"] == str(state / "tls" / "ca.crt")
        assert exported["MESH_TLS_CLIENT_KEY_FILE"] == str(state / "tls" / "client.key")
        created = await asyncio.to_thread(
            _run, "client", "create", "--name", "Ada", "--email", "a@x.io", "--age", "36",
            "--json", env=exported,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    assert (state / "tls" / "server.key").stat().st_mode & 0o077 == 0


async def test_the_demo_over_mutual_tls_fails_no_call(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    result = await asyncio.to_thread(
        _run, "mesh", "demo", "--duration", "8", "--mtls", "--state-dir", str(state)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SIGKILL" in result.stdout and "0 failed calls" in result.stdout
    assert (state / "tls" / "ca.crt").exists()
