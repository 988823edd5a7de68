"""One replica as a ReplicaSet runs a pod: a crash backs off, a kill is replaced at once."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

from mesh._process import LogSink
from mesh._replica import Backoff, Replica, ReplicaState
from tests.mesh.drills import eventually


def test_backoff_doubles_per_short_run_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay(10_000) == 8.0  # no overflow, however many crashes


@pytest.mark.parametrize(
    "options", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"reset_after": 0}]
)
def test_backoff_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"initial|reset_after"):
        Backoff(**options)


def _replica(tmp_path: Path, **env: str) -> Replica:
    environment = {
        **os.environ,
        "MESH_STORE": f"sqlite:///{tmp_path / 'users.db'}",
        "MESH_AUTH_SECRET": "s" * 40,
        "MESH_METRICS_PORT": "-1",
        "MESH_DRAIN_DELAY": "0",
        **env,
    }
    return Replica(
        "users-0",
        "127.0.0.2",
        0,
        env=environment,
        log=LogSink(tmp_path / "users-0.log"),
        on_change=lambda: None,
        backoff=Backoff(initial=0.2, maximum=0.8, reset_after=5.0),
    )


@pytest.mark.slow
async def test_a_replica_that_crashes_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    replica = _replica(tmp_path, MESH_LOG_LEVEL="NOT-A-LEVEL")  # exits 2 at once
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    last = -1
    replica.start()
    try:
        async with asyncio.timeout(20):
            while len(starts) < 5:
                if replica.restarts != last:
                    last = replica.restarts
                    starts.append(loop.time())
                await asyncio.sleep(0.01)
        exit_code = replica.last_exit
    finally:
        await replica.stop(timeout=2)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each wait is the backoff plus a failing start: 0.2, 0.4, 0.8, then capped at 0.8.
    assert gaps[0] < gaps[2], gaps
    assert all(gap >= 0.2 for gap in gaps), gaps
    assert exit_code == 2  # a configuration error: the process said so and exited
    assert "MESH_LOG_LEVEL" in (tmp_path / "users-0.log").read_text()


@pytest.mark.slow
async def test_a_killed_replica_is_replaced_at_once_and_counts_no_crash(tmp_path: Path) -> None:
    replica = _replica(tmp_path)
    replica.start()
    try:
        await replica.wait_bound(20)
        await eventually(lambda: replica.state is ReplicaState.SERVING, 20, "SERVING")
        for kill in range(3):
            pid = replica.kill(graceful=False)
            assert pid is not None

            def replaced(p: int = pid) -> bool:
                return replica.state is ReplicaState.SERVING and replica.pid != p

            await eventually(replaced, 10, "replaced")
            assert replica.restarts == kill + 1
    finally:
        await replica.stop(timeout=5)
    assert replica.state is ReplicaState.STOPPED
    assert replica.pid is None
