"""``python -m bench.reliability [--only NAME ...] [--rounds N] [--out FILE]``.

Runs every fault scenario of :mod:`bench.reliability._scenarios` (the same
code the fault tests run) on real local meshes, and writes the table of
docs/RELIABILITY.md: the load, calls, failures by code, lost writes,
duplicates, writes acknowledged during the fault and recovery time. The
full run takes about three minutes. Exits 1 when a scenario lost or
duplicated a write, acknowledged one during a fault, or raised.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.reliability._registry import SCENARIOS, Scenario
from bench.reliability._scenarios import Outcome
from service.testing_postgres import why_no_local_postgres

__all__ = ["main", "render", "run"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reliability", description=__doc__.split("\n\n")[1]
    )
    names = [s.name for s in SCENARIOS]
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME",
                        help=f"run only these scenarios ({', '.join(names)})")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every scenario (default: each scenario's own)")  # fmt: skip
    parser.add_argument("--out", default=str(DOC),
                        help="markdown file whose table is replaced; - prints it "
                        "(default %(default)s)")  # fmt: skip
    return parser


def _failures(outcome: Outcome) -> str:
    if not outcome.failures:
        return "0"
    codes = ", ".join(f"{code} {n}" for code, n in outcome.failures.most_common())
    return f"{sum(outcome.failures.values())} ({codes})"


def _recovery(outcome: Outcome) -> str:
    if not outcome.recovery_s:
        return "-"
    times = sorted(outcome.recovery_s)
    return f"{times[-1]:.1f} s (median {times[len(times) // 2]:.1f})"


def render(outcomes: Sequence[Outcome | tuple[str, str]]) -> str:
    """The markdown table; a ``(scenario, error)`` pair is a scenario that raised."""
    lines = [
        "| Scenario | Load | Rounds | Calls | Failed calls (by code) | Slowest failure "
        "| Lost writes | Duplicates | Acked during fault | Restarts | Recovery (max) | Notes |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for item in outcomes:
        if isinstance(item, tuple):
            lines.append(f"| {item[0]} | - | - | - | **{item[1]}** | - | - | - | - | - | - | - |")
            continue
        o = item
        lines.append(
            f"| {o.scenario} | {o.load} | {o.rounds} | {o.calls} | {_failures(o)} "
            f"| {o.slowest_failure_s:.2f} s | {o.lost} | {o.duplicates} "
            f"| {o.acknowledged_during_fault} | {o.restarts} | {_recovery(o)} "
            f"| {'; '.join(dict.fromkeys(o.notes)) or '-'} |"
        )
    return "\n".join(lines)


async def _one(scenario: Scenario, rounds: int | None) -> Outcome | tuple[str, str]:
    if scenario.needs_postgres and (reason := why_no_local_postgres()):
        return (scenario.name, f"skipped: {reason}")
    options = {} if rounds is None else {"rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="meshdemo-reliability-") as tmp:
        try:
            return await scenario.run(Path(tmp) / "mesh", **options)
        except Exception as exc:  # reported in the table, and in the exit status
            return (scenario.name, f"{type(exc).__name__}: {exc}")


async def run(names: Sequence[str] | None, rounds: int | None) -> list[Outcome | tuple[str, str]]:
    """Run the chosen scenarios (all by default) one after the other."""
    chosen = [s for s in SCENARIOS if names is None or s.name in names]
    results = []
    for scenario in chosen:
        started = time.monotonic()
        print(f"running {scenario.name} ...", file=sys.stderr, flush=True)
        results.append(await _one(scenario, rounds))
        print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return results


def _healthy(item: Outcome | tuple[str, str]) -> bool:
    if isinstance(item, tuple):
        return item[1].startswith("skipped")
    return not (item.lost or item.duplicates or item.acknowledged_during_fault or item.problems)


def _write(out: str, table: str) -> None:
    stamp = (
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} by `python -m bench.reliability` "
        f"(Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"{platform.system()} {platform.machine()})."
    )
    block = f"{BEGIN}\n{stamp}\n\n{table}\n{END}"
    if out == "-":
        print(block)
        return
    path = Path(out)
    text = path.read_text() if path.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + block + tail)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, write the table; 0 when no scenario lost or doubled a write."""
    args = _parser().parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        _parser().error("--rounds must be at least 1")
    results = asyncio.run(run(args.only, args.rounds))
    _write(args.out, render(results))
    return 0 if all(_healthy(item) for item in results) else 1


if __name__ == "__main__":
    sys.exit(main())
