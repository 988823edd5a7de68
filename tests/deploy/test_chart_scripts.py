"""The shell scripts the chart runs in its pods, run here against a real replica.

The `helm test` pod's script and one iteration of the load generator's loop are taken
from the rendered manifests and run with ``sh`` exactly as written, with the pod's
literal environment. Only what the cluster would supply is replaced: the target (a real
replica on 127.0.0.2, port 0, instead of the headless Service), the JWT secret (the
test replica's instead of the Secret's), and the paths that would be the pod's /tmp.
OTEL_* variables are left out, so nothing tries to reach a collector.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from service.testing import TEST_SECRET, InProcessServer, serve
from tests.deploy.conftest import Rendered, container, render

pytestmark = pytest.mark.slow


@pytest.fixture
async def replica() -> AsyncIterator[InProcessServer]:
    async with serve("127.0.0.2") as server:
        yield server


def _script(item: Mapping[str, Any]) -> str:
    command = item["command"]
    assert command[:2] == ["sh", "-c"], command
    script: str = command[2]
    return script


def _pod_env(item: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal variables (no references, no OTEL_*, no downward API)."""
    return {
        e["name"]: e["value"]
        for e in item.get("env", [])
        if "value" in e and not e["name"].startswith(("OTEL_", "K8S_"))
    }


def _python_on_path(directory: Path) -> str:
    """A PATH whose `python` is this interpreter (the image's `python`), then the system's."""
    # A wrapper, not a symlink: a venv's interpreter finds its packages only when run
    # from its own bin/ directory.
    directory.mkdir(exist_ok=True)
    wrapper = directory / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


async def _run(script: str, env: Mapping[str, str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        script,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _environment(item: Mapping[str, Any], replica: InProcessServer, tmp: Path) -> dict[str, str]:
    return {
        **_pod_env(item),
        "MESH_TARGET": f"static:///{replica.address}",
        "MESH_AUTH_SECRET": TEST_SECRET,
        "PATH": _python_on_path(tmp / "bin"),
        "HOME": str(tmp),
    }


@pytest.mark.timeout(90)
async def test_the_helm_test_script_calls_every_rpc(
    replica: InProcessServer, tmp_path: Path
) -> None:
    item = container(render().get("Pod", "meshdemo-test"), "test")
    code, out, err = await _run(_script(item), _environment(item, replica, tmp_path), 80)
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    for step in ("health", "CreateUser", "GetUser", "ListUsers", "BatchCreateUsers", "Chat"):
        assert f"== {step}" in out
    assert "== all five RPCs answered" in out
    assert '"replica": "test-127.0.0.2"' in out, "the chat echo names the replica"


@pytest.mark.timeout(60)
async def test_the_helm_test_script_fails_when_the_service_refuses(
    replica: InProcessServer, tmp_path: Path
) -> None:
    item = container(render().get("Pod", "meshdemo-test"), "test")
    env = {**_environment(item, replica, tmp_path), "MESH_AUTH_SECRET": "w" * 48}
    code, out, _ = await _run(_script(item), env, 50)
    assert code != 0
    assert "== all five RPCs answered" not in out


def _loadgen(rendered: Rendered) -> dict[str, Any]:
    return container(rendered.get("Deployment", "meshdemo-loadgen"), "loadgen")


@pytest.mark.timeout(60)
async def test_one_loadgen_run_logs_one_json_summary(
    replica: InProcessServer, tmp_path: Path
) -> None:
    item = _loadgen(render({"loadgen": {"enabled": True, "mix": "get=80,create=20"}}))
    heartbeat = tmp_path / "heartbeat"
    env = {
        **_environment(item, replica, tmp_path),
        "LOAD_RUNS": "1",
        "LOAD_DURATION": "1",
        "LOAD_RPS": "20",
        "LOAD_PAUSE": "0",
        "LOAD_HEARTBEAT": str(heartbeat),
    }
    code, out, err = await _run(_script(item), env, 50)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if line.strip()]
    summary = json.loads(line)
    assert summary["ok"] > 0
    assert summary["failed"] == 0
    assert "loadgen: run 1 exited with status 0" in err
    assert heartbeat.exists()


def test_the_loadgen_probes_read_the_heartbeat_it_touches() -> None:
    item = _loadgen(render({"loadgen": {"enabled": True}}))
    heartbeat = next(e["value"] for e in item["env"] if e["name"] == "LOAD_HEARTBEAT")
    assert item["readinessProbe"]["exec"]["command"] == ["test", "-f", heartbeat]
    assert f"os.stat('{heartbeat}')" in item["livenessProbe"]["exec"]["command"][-1]
    assert heartbeat.startswith("/tmp/"), "the only writable path of the container"


@pytest.mark.timeout(60)
async def test_the_loadgen_loop_stops_at_once_on_sigterm(
    replica: InProcessServer, tmp_path: Path
) -> None:
    # In the pod the shell is PID 1: without its trap SIGTERM would be ignored until
    # the kubelet's SIGKILL at the end of the grace period.
    item = _loadgen(render({"loadgen": {"enabled": True}}))
    heartbeat = tmp_path / "heartbeat"
    env = {
        **_environment(item, replica, tmp_path),
        "LOAD_DURATION": "30",
        "LOAD_RPS": "5",
        "LOAD_HEARTBEAT": str(heartbeat),
    }
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        _script(item),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # A file written by another process: polled, at most 20 s.
        for _ in range(400):
            if heartbeat.exists():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the loop never touched its heartbeat")
        await asyncio.sleep(1.5)  # the load run is under way
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 0
        assert loop.time() - started < 8
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
