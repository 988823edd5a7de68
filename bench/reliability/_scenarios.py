"""The fault scenarios: each runs a real local mesh under load, injects its fault, measures.

One function per scenario, shared by the fault tests (which assert on the
:class:`Outcome`) and by ``python -m bench.reliability`` (which tabulates
it). Every scenario is bounded: a fixed number of rounds, traffic bounded in
calls and seconds, every wait with a limit (an exceeded limit raises).

The mesh is the test mesh: three replicas on 127.0.0.x, DNS with a 1 s TTL,
quick drains, no metrics scrape.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.reliability._traffic import Traffic, TrafficResult, audit_writes, eventually
from client import NewUserSpec, UserClient, mint_token
from mesh._config import MeshConfig
from mesh._supervisor import Mesh
from service.testing_postgres import local_postgres

__all__ = [
    "RECOVERY_LIMIT_S",
    "Outcome",
    "all_replicas_killed",
    "drill_client",
    "mesh_config",
    "postgres_outage",
    "rolling_restart",
    "seed_users",
    "sigkill_under_load",
    "sqlite_removed",
    "stalled_replica",
]

#: How long a replica may take to come back after a fault is over.
RECOVERY_LIMIT_S = 20.0


@dataclass
class Outcome:
    """The measured result of a scenario, summed over its rounds."""

    scenario: str
    load: str
    rounds: int = 0
    calls: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicates: int = 0
    #: Seconds from the end of each fault until the mesh served again, per round.
    recovery_s: list[float] = field(default_factory=list)
    #: Acknowledged writes sent while the store could not keep them (must be 0).
    acknowledged_during_fault: int = 0
    #: Seconds of the slowest failed call (a fast failure is well below the deadline).
    slowest_failure_s: float = 0.0
    #: Restarts of replica processes (a store fault must need none).
    restarts: int = 0
    problems: list[str] = field(default_factory=list)
    #: Figures of the scenario that no column holds.
    notes: list[str] = field(default_factory=list)
    #: (start, end) loop times of each round's fault, for acknowledged_during_fault.
    fault_windows: list[tuple[float, float]] = field(default_factory=list)

    async def add(self, client: UserClient, traffic: Traffic, result: TrafficResult) -> None:
        """Count one round's traffic in, reading its writes back from the store."""
        self.rounds += 1
        self.calls += result.calls
        self.failures.update(result.failures_by_code())
        self.slowest_failure_s = max(self.slowest_failure_s, result.slowest_failure_s)
        audit = await audit_writes(client, result, traffic.tag)
        self.lost += audit.lost
        self.duplicates += audit.duplicates
        self.problems += audit.problems
        if len(self.fault_windows) == self.rounds:
            start, end = self.fault_windows[-1]
            self.acknowledged_during_fault += len(result.acknowledged_between(start, end))


def mesh_config(state_dir: Path, **overrides: Any) -> MeshConfig:
    """A mesh in ``state_dir`` on a free port, quick to drain, without the metrics scrape."""
    settings: dict[str, Any] = {
        "state_dir": state_dir,
        "replicas": 3,
        "port": 0,
        "drain_delay": 1.5,
        "shutdown_grace": 2.0,
        "scrape_interval": 0,
    }
    settings.update(overrides)
    return MeshConfig(**settings)


def drill_client(mesh: Mesh, **options: Any) -> UserClient:
    """A client of the mesh's DNS name with an admin token, tracing off."""
    token = mint_token(mesh.secret, "drill", ["admin"], 600)
    return UserClient(mesh.target, token=token, tracing=False, **options)


async def seed_users(client: UserClient, count: int = 20) -> list[str]:
    """Create ``count`` users in one batch; their ids."""
    tag = uuid.uuid4().hex[:6]
    specs = [NewUserSpec(f"Seed {n}", f"seed-{tag}-{n}@example.com", 20 + n) for n in range(count)]
    return [user.id for user in await client.batch_create_users(specs)]


async def _first_success(client: UserClient, user_id: str, within: float) -> float:
    """Seconds until a GetUser succeeds again (bounded)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            await client.get_user(user_id, timeout=1.0)
            return loop.time() - started
        except Exception:
            if loop.time() - started > within:
                raise AssertionError(f"no successful call within {within} s") from None
            await asyncio.sleep(0.05)


Fault = Callable[[Mesh, UserClient, Outcome], Awaitable[None]]


async def _rounds(
    outcome: Outcome, config: MeshConfig, rounds: int, fault: Fault, *, rps: float, duration: float
) -> Outcome:
    """``rounds`` rounds on one mesh: traffic for ``duration`` s with ``fault`` in the middle."""
    async with Mesh(config) as mesh, drill_client(mesh) as client:
        ids = await seed_users(client)
        for _ in range(rounds):
            traffic = Traffic(client, ids, rps=rps, duration=duration)
            run = asyncio.create_task(traffic.run())
            try:
                await asyncio.sleep(min(1.5, duration / 4))
                await fault(mesh, client, outcome)
            finally:
                result = await run
            await outcome.add(client, traffic, result)
            ids = list(result.acknowledged) or ids
        outcome.restarts = sum(r.restarts for r in mesh.replicas)
    return outcome


async def sigkill_under_load(state_dir: Path, *, rounds: int = 3) -> Outcome:
    """One replica SIGKILLed under reads and writes; the supervisor restarts it."""
    outcome = Outcome("replica SIGKILLed under load", "60 calls/s (20 % creates), 6 s per round")

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        victim = mesh.replica("users-1")
        mesh.kill(victim.name)
        await eventually(lambda: not victim.ready, 5.0, "the killed replica leaves")
        result.recovery_s.append(await eventually(lambda: victim.ready, RECOVERY_LIMIT_S, "back"))

    return await _rounds(outcome, mesh_config(state_dir), rounds, fault, rps=60, duration=6)


async def stalled_replica(state_dir: Path, *, rounds: int = 2) -> Outcome:
    """One replica SIGSTOPped for 3 s (in DNS, connections open, nothing answers)."""
    outcome = Outcome("replica stalled 3 s (SIGSTOP)", "50 calls/s (20 % creates), 7 s per round")

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        stalled = mesh.replica("users-2")
        stalled.pause()
        try:
            await asyncio.sleep(3.0)
        finally:
            stalled.resume()
        result.recovery_s.append(await eventually(lambda: stalled.ready, RECOVERY_LIMIT_S, "back"))

    return await _rounds(outcome, mesh_config(state_dir), rounds, fault, rps=50, duration=7)


async def rolling_restart(state_dir: Path, *, rounds: int = 1) -> Outcome:
    """Every replica restarted gracefully in turn (SIGTERM: NOT_SERVING, drain, stop)."""
    outcome = Outcome("rolling graceful restart", "50 calls/s (20 % creates), 16 s per round")

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        for replica in list(mesh.replicas):
            restarts = replica.restarts
            mesh.kill(replica.name, graceful=True)

            def restarted(r: Any = replica, n: int = restarts) -> bool:
                return bool(r.ready and r.restarts == n + 1)

            back = await eventually(restarted, RECOVERY_LIMIT_S, f"{replica.name} back")
            result.recovery_s.append(back)

    return await _rounds(outcome, mesh_config(state_dir), rounds, fault, rps=50, duration=16)


async def all_replicas_killed(state_dir: Path, *, rounds: int = 2) -> Outcome:
    """Every replica SIGKILLed at once; the same client recovers by itself."""
    outcome = Outcome("every replica SIGKILLed at once", "40 calls/s (20 % creates), 8 s per round")

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        for replica in mesh.replicas:
            mesh.kill(replica.name)
        await eventually(lambda: not any(r.ready for r in mesh.replicas), 5.0, "all gone")
        result.recovery_s.append(
            await eventually(lambda: all(r.ready for r in mesh.replicas), RECOVERY_LIMIT_S, "back")
        )

    return await _rounds(outcome, mesh_config(state_dir), rounds, fault, rps=40, duration=8)


def _store_env(health_interval: float = 0.5) -> Mapping[str, str]:
    return {"MESH_HEALTH_INTERVAL": str(health_interval)}


async def postgres_outage(state_dir: Path, *, rounds: int = 3, outage_s: float = 3.0) -> Outcome:
    """The replicas' PostgreSQL (a private initdb) stopped for ``outage_s`` s, then started."""
    outcome = Outcome(
        f"PostgreSQL stopped {outage_s:g} s, restarted",
        "40 calls/s (20 % creates), 10 s per round",
    )

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(server.stop)
        stopped = loop.time()
        try:
            # Every replica NOT_SERVING: the DNS name has no address left.
            await eventually(lambda: not mesh.status()["records"], 8.0, "DNS empty")
            await asyncio.sleep(outage_s)
        finally:
            await asyncio.to_thread(server.start)
        result.fault_windows.append((stopped, loop.time()))
        back = await eventually(
            lambda: len(mesh.status()["records"]) == len(mesh.replicas), RECOVERY_LIMIT_S, "back"
        )
        result.recovery_s.append(back)

    with local_postgres() as server:
        server.start()
        config = mesh_config(state_dir, store=server.url, extra_env=_store_env())
        return await _rounds(outcome, config, rounds, fault, rps=40, duration=10)


def _hide(path: Path, keep: Path) -> None:
    """Remove ``path`` (unlink), keeping its inode reachable at ``keep``."""
    os.link(path, keep)
    path.unlink()


def _put_back(keep: Path, path: Path) -> None:
    os.link(keep, path)
    keep.unlink()


async def sqlite_removed(state_dir: Path, *, rounds: int = 3, outage_s: float = 2.0) -> Outcome:
    """The shared SQLite file removed under load for ``outage_s`` s, then put back.

    "Removed" is an unlink of the path (the replicas' open handles still
    reach the file); the file is kept by a hard link elsewhere and linked
    back, so every write acknowledged before the removal is still there. A
    create acknowledged while the path was gone would have gone into the
    unlinked file: the scenario counts those (the goal is none).
    """
    outcome = Outcome(
        f"SQLite file removed {outage_s:g} s, put back",
        "40 calls/s (20 % creates), 9 s per round",
    )
    config = mesh_config(state_dir, extra_env=_store_env())
    database = Path(config.store_url.removeprefix("sqlite:///"))

    async def fault(mesh: Mesh, client: UserClient, result: Outcome) -> None:
        loop = asyncio.get_running_loop()
        keep = database.with_name("kept.db")
        _hide(database, keep)
        removed = loop.time()
        try:
            await eventually(lambda: not mesh.status()["records"], 8.0, "DNS empty")
            await asyncio.sleep(outage_s)
        finally:
            _put_back(keep, database)
        result.fault_windows.append((removed + 0.05, loop.time()))  # sent once the path is gone
        back = await eventually(
            lambda: len(mesh.status()["records"]) == len(mesh.replicas), RECOVERY_LIMIT_S, "back"
        )
        result.recovery_s.append(back)

    return await _rounds(outcome, config, rounds, fault, rps=40, duration=9)
