"""``python -m mesh`` as a person uses it: `up` in one terminal, the other commands in another."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh._state import pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

_STATUS_KEYS = {"target", "dns", "name", "replicas"}
_REPLICA_KEYS = {"name", "address", "pid", "state", "restarts"}


@dataclass
class Up:
    """A running ``python -m mesh up`` and its state directory."""

    process: asyncio.subprocess.Process
    state_dir: Path

    def run(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _mesh(*args, "--state-dir", str(self.state_dir), env=env)


def _mesh(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def _start_up(state_dir: Path, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "up", "--port", "0", "--state-dir", str(state_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while b"Ctrl-C drains" not in (line := await process.stdout.readline()):
            assert line, "mesh up ended before it was up"
    return process


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    state_dir = tmp_path / "state"
    process = await _start_up(state_dir)
    try:
        yield Up(process, state_dir)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def _status(up: Up) -> dict[str, Any]:
    """``mesh status --json``: JSON, so its values are whatever the command wrote."""
    result = up.run("status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


async def _until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_status_env_kill_scale_traces_and_down_from_another_terminal(up: Up) -> None:
    status = _status(up)
    assert status.keys() >= _STATUS_KEYS
    replicas = status["replicas"]
    assert isinstance(replicas, list) and [r["name"] for r in replicas] == [
        "users-0", "users-1", "users-2"
    ]  # fmt: skip
    assert all(r.keys() >= _REPLICA_KEYS and r["state"] == "SERVING" for r in replicas)
    assert status["name"] == "users.meshdemo.svc.cluster.local"
    assert str(status["target"]).startswith(f"dns://{status['dns']}/{status['name']}:")

    # `eval "$(python -m mesh env)"`, then the client CLI reaches the mesh by its DNS name.
    env_line = up.run("env").stdout.strip()
    assert env_line.startswith("export MESH_TARGET=")
    exported = dict(part.split("=", 1) for part in shlex.split(env_line)[1:])
    created = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "client", "create", "--name", "Ada", "--email", "a@x.io",
         "--age", "36", "--json"],
        capture_output=True, text=True, timeout=30, env={**os.environ, **exported}, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    killed = up.run("kill", "users-1")
    assert killed.returncode == 0 and killed.stdout.startswith("SIGKILL users-1"), killed.stderr

    def restarted() -> bool:
        row = _status(up)["replicas"][1]
        return bool(row["restarts"] == 1 and row["state"] == "SERVING")

    await _until(restarted)
    assert up.run("scale", "4").returncode == 0
    await _until(lambda: len(_status(up)["records"]) == 4)

    await _until(lambda: "CreateUser" in up.run("traces").stdout)
    listing = up.run("traces").stdout
    trace_id = next(line.split()[0] for line in listing.splitlines() if "CreateUser" in line)
    waterfall = up.run("traces", trace_id)
    assert waterfall.returncode == 0 and "users-" in waterfall.stdout, waterfall.stderr

    down = up.run("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert await asyncio.wait_for(up.process.wait(), 5) == 0
    after = up.run("status")
    assert after.returncode == 1 and "no mesh is running" in after.stderr
    assert (up.state_dir / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_second_up_in_the_same_state_dir_is_refused(up: Up) -> None:
    result = up.run("up", "--port", "0")
    assert result.returncode == 1
    assert "already running" in result.stderr


async def test_supervisor_killed_with_sigkill_leaves_no_process_behind(up: Up) -> None:
    pids = [r["pid"] for r in _status(up)["replicas"]]
    assert all(isinstance(pid, int) and pid_alive(pid) for pid in pids)
    up.process.kill()
    await up.process.wait()
    await _until(lambda: not any(pid_alive(pid) for pid in pids), within=2.0)


def test_commands_without_a_running_mesh_say_so(tmp_path: Path) -> None:
    for command in (["status"], ["env"], ["kill", "random"], ["scale", "2"], ["down"]):
        result = _mesh(*command, "--state-dir", str(tmp_path))
        assert result.returncode == 1, command
        assert result.stderr.startswith("error: no mesh is running in"), result.stderr


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    assert _mesh("scale", "-1", "--state-dir", str(tmp_path)).returncode == 2
    assert _mesh("up", "--replicas", "99", "--state-dir", str(tmp_path)).returncode == 2
    bad_store = _mesh("up", "--store", "mysql://x", "--state-dir", str(tmp_path))
    assert bad_store.returncode == 2 and "--store" in bad_store.stderr


async def test_the_demo_without_a_terminal_tells_the_story_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "demo"
    result = await asyncio.to_thread(
        _mesh, "demo", "--duration", "8", "--state-dir", str(state_dir)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for expected in ("1. mesh up", "2. load", "SIGKILL", "3. summary", "Share of calls per",
                     "Failover", "4. a trace", "0 failed calls", "timeline picture"):  # fmt: skip
        assert expected in result.stdout, expected
    assert "\x1b[" not in result.stdout  # plain lines, no terminal control
    assert (state_dir / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    status = json.loads((state_dir / "status.json").read_text())
    assert status["state"] == "stopped"
    assert not any(r["pid"] for r in status["replicas"])
    assert not (state_dir / "supervisor.json").exists()
