"""``load`` end to end on real replicas: what a person reads, what a script parses, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from client.cli import EXIT_INTERRUPTED, EXIT_OK
from service.testing import admin_token
from tests.cli.conftest import Cli, Mesh, lines


async def test_without_json_a_person_gets_a_summary_and_events(cli: Cli, mesh: Mesh) -> None:
    result = await cli("load", "--duration", "1.5", "--rps", "40", "--seed", "99")
    assert result.code == EXIT_OK, result.err
    out = result.out
    for expected in ("calls ", "failed 0", "seed 99", "Per operation", "get", "Per endpoint",
                     "Final state", "SERVING", "repeat with --seed 99"):  # fmt: skip
        assert expected in out, expected
    for replica in mesh.replicas:
        assert replica.address in out
        # Plain progress on stderr: an event line per endpoint, then per-endpoint figures.
        assert f"  {replica.address}  added (SERVING)" in result.err
        assert any(line.startswith(f"  {replica.address} SERVING rate=") for line in
                   result.err.splitlines())  # fmt: skip
    assert not out.lstrip().startswith("{")  # no JSON without --json
    assert all(len(line) <= 80 for line in out.splitlines())


async def test_summary_file_gets_the_json_and_stdout_the_summary(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    result = await cli("load", "--duration", "1", "--rps", "20", "--summary", str(path))
    assert result.code == EXIT_OK, result.err
    document = json.loads(path.read_text())
    assert "Per endpoint" in result.out
    assert isinstance(document["seed"], int)  # drawn, and recorded
    assert f"seed {document['seed']}" in result.out
    assert set(document["per_operation"]) == {"get", "create", "list"}
    for row in document["per_endpoint"].values():
        assert row["final_state"] == "SERVING"
        assert row["failures"] == row["ejections"] == 0


async def test_a_replica_stopped_mid_run_is_reported_lost(cli: Cli, mesh: Mesh) -> None:
    victim = mesh.replicas[1]
    run = asyncio.create_task(
        cli("load", "--duration", "3", "--rps", "50", "--mix", "get=1", "--json")
    )
    await asyncio.sleep(1.2)
    await victim.stop()
    result = await asyncio.wait_for(run, 20)
    assert result.code == EXIT_OK, result.err
    summary = json.loads(result.out)
    assert summary["failed"] == 0, summary["errors_by_code"]  # retried on the other replica
    assert summary["per_endpoint"][victim.address]["final_state"] == "UNREACHABLE"
    events = [line for line in lines(result.err) if victim.address in line and "s  " in line]
    # A graceful stop says NOT_SERVING first (its health Watch ends after that), a crash
    # says UNREACHABLE; either way the replica is reported lost, once.
    lost = [line for line in events if " lost (" in line]
    assert len(lost) == 1 and lost[0].endswith(("(NOT_SERVING)", "(UNREACHABLE)")), events


async def test_a_cancelled_run_prints_the_partial_summary_and_exits_130(cli: Cli) -> None:
    run = asyncio.create_task(cli("load", "--duration", "30", "--rps", "50", "--json"))
    await asyncio.sleep(1.5)
    run.cancel()  # what asyncio.run does to the main task on Ctrl-C
    result = await asyncio.wait_for(run, 10)
    assert result.code == EXIT_INTERRUPTED
    summary = json.loads(result.out)
    assert summary["interrupted"] is True
    assert 0 < summary["calls"] < 30 * 50
    assert summary["duration"] < 10
    assert "interrupted" in result.err


async def test_ctrl_c_on_the_process_prints_the_partial_summary(mesh: Mesh) -> None:
    env = {**os.environ, "MESH_TARGET": mesh.target, "MESH_TOKEN": admin_token()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "load", "--duration", "30", "--rps", "50",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        # Wait for the first figures: the run is under way.
        while b"t=" not in await asyncio.wait_for(proc.stderr.readline(), 15):
            pass
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED
    text = out.decode()
    assert text.startswith("Interrupted: figures of the calls that finished")
    assert "Per endpoint" in text
