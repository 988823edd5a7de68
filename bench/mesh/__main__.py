"""``python -m bench.mesh [--quick] [--rounds N] [--only NAME ...] [--json FILE]``.

The local mesh's own figures, read as a client would read them, from the
mesh's DNS server: how long ``mesh up`` takes until every replica is in DNS,
and after a SIGKILL how long until the replica is out of DNS and back. Then
the demo itself: failed calls (the goal is none) and the share of calls that
needed a retry. Prints a markdown table, then every figure as JSON; exits 1
when a goal is missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
from rich.console import Console

from bench._cli import suite_parser
from bench.service._common import Row, median
from bench.service._report import run_benchmarks, suite_main
from mesh._config import MeshConfig
from mesh._demo import DemoPlan, run_demo
from mesh._state import StateDir
from mesh._supervisor import Mesh

__all__ = ["BENCHMARKS", "Bounds", "main", "run"]


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Rounds of the timing benchmarks and the demo's length."""

    rounds: int = 5
    demo_duration: float = 90.0


FULL = Bounds()
QUICK = Bounds(rounds=1, demo_duration=8.0)
_POLL_S = 0.01
_LIMIT_S = 15.0


async def _records(mesh: Mesh) -> set[str]:
    """The A records the mesh's DNS server answers now (one UDP query, no cache)."""
    query = dns.message.make_query(mesh.config.name, dns.rdatatype.A)
    try:
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=_dns_port(mesh), timeout=0.5)
    except dns.exception.Timeout:
        return set()
    return {item.address for rrset in reply.answer for item in rrset}


def _dns_port(mesh: Mesh) -> int:
    return int(mesh.status()["dns"].rsplit(":", 1)[1])


async def _until(predicate: Callable[[], Awaitable[bool]], started: float) -> float:
    """Seconds from ``started`` until ``predicate()`` holds (polled every 10 ms)."""
    while not await predicate():
        if time.monotonic() - started > _LIMIT_S:
            return float("nan")
        await asyncio.sleep(_POLL_S)
    return time.monotonic() - started


def _config(root: Path) -> MeshConfig:
    return MeshConfig(state_dir=root, replicas=3, port=0, scrape_interval=0)


async def up(bounds: Bounds) -> list[Row]:
    """Seconds from starting the mesh until DNS answers with all three replicas."""
    times: list[float] = []
    for _ in range(bounds.rounds):
        with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
            mesh = Mesh(_config(Path(tmp)))
            started = time.monotonic()
            async with mesh:
                times.append(await _until(_all_in_dns(mesh), started))
    value = median(times)
    return [Row("mesh up", "start to all 3 replicas in DNS", value, "s", "<= 3", value <= 3.0,
                {"rounds": times})]  # fmt: skip


def _all_in_dns(mesh: Mesh) -> Callable[[], Awaitable[bool]]:
    hosts = {r.host for r in mesh.replicas}
    return lambda: _has(mesh, hosts)


async def _has(mesh: Mesh, hosts: set[str]) -> bool:
    return hosts <= await _records(mesh)


async def _lacks(mesh: Mesh, host: str) -> bool:
    return host not in await _records(mesh)


async def sigkill(bounds: Bounds) -> list[Row]:
    """After SIGKILL: seconds until the replica is out of DNS, and until it is back in."""
    gone: list[float] = []
    back: list[float] = []
    with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
        async with Mesh(_config(Path(tmp))) as mesh:
            victim = mesh.replica("users-1")
            for _ in range(bounds.rounds):
                await mesh.wait_serving(timeout=_LIMIT_S)
                await asyncio.sleep(0.5)
                started = time.monotonic()
                mesh.kill(victim.name)
                gone.append(await _until(lambda: _lacks(mesh, victim.host), started))
                back.append(await _until(lambda: _has(mesh, {victim.host}), started))
    out, up_again = median(gone), median(back)
    return [
        Row("mesh SIGKILL", "kill to out of DNS", out, "s", "<= 1", out <= 1.0, {"rounds": gone}),
        Row("mesh SIGKILL", "kill to back in DNS (SERVING)", up_again, "s", "<= 3",
            up_again <= 3.0, {"rounds": back}),
    ]  # fmt: skip


async def demo(bounds: Bounds) -> list[Row]:
    """The demo, unchanged: failed calls and the share of calls that needed a retry."""
    with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
        plan = DemoPlan.for_run(bounds.demo_duration, 3)
        console = Console(file=io.StringIO(), width=100)
        result = await run_demo(plan, StateDir(Path(tmp)), console, live=False, seed=1)
    summary = result.summary
    retried = summary.retries / summary.calls if summary.calls else float("nan")
    detail = {"calls": summary.calls, "retries": summary.retries, **result.recorder.as_dict()}
    return [
        Row("demo", "failed calls", float(summary.failed), "calls", "0", summary.failed == 0,
            detail),
        Row("demo", "calls that needed a retry", retried * 100, "%", ""),
    ]  # fmt: skip


BENCHMARKS: dict[str, Callable[[Bounds], Awaitable[list[Row]]]] = {
    "up": up,
    "sigkill": sigkill,
    "demo": demo,
}


async def run(names: Sequence[str], bounds: Bounds) -> list[Row]:
    """Run the named benchmarks one after the other; all their rows."""
    return await run_benchmarks(BENCHMARKS, names, bounds)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the JSON; 0 when every goal is met."""
    args = suite_parser("python -m bench.mesh", __doc__, list(BENCHMARKS)).parse_args(argv)
    return suite_main(args, BENCHMARKS, full=FULL, quick=QUICK)


if __name__ == "__main__":
    sys.exit(main())
