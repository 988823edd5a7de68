"""``stats``: resolve the target, wait for health, print per-endpoint stats as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from typing import Any

from client._client import ClientStats, UserClient
from client.cli._common import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Io,
    add_command,
    non_negative_float,
    one_call_budget,
    run_with_client,
)

NAME = "stats"
_SETTLING = frozenset({"CONNECTING"})
_USABLE = frozenset({"SERVING", "READY"})


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(
        commands,
        NAME,
        parent,
        "resolve the target and print per-endpoint stats as JSON",
        epilog_extra="exits 3 when no endpoint is SERVING or READY at the end of the wait.\n"
        "The command ends within --wait + --timeout seconds.",
    )
    cmd.add_argument(
        "--wait",
        type=non_negative_float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for endpoints and their first health report (default: %(default)s)",
    )


def budget(args: argparse.Namespace) -> float:
    """The wait, then as long as one call may take (the client closing)."""
    wait: float = args.wait
    return wait + one_call_budget(args)


async def _settled_stats(client: UserClient, wait: float) -> ClientStats:
    """The client's stats once endpoints are known and past CONNECTING, or at ``wait``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        stats = client.stats()
        settled = stats.endpoints and not any(e.state in _SETTLING for e in stats.endpoints)
        if settled or loop.time() >= deadline:
            return stats
        await asyncio.sleep(0.05)


async def _stats(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    stats = await _settled_stats(client, args.wait)
    document = {
        "target": args.target,
        "policy": args.policy,
        "endpoints": [asdict(e) for e in stats.endpoints],
        "calls": stats.calls,
        "retries": stats.retries,
        "failures": stats.failures,
    }
    io.out(json.dumps(document) if args.json else json.dumps(document, indent=2))
    if not any(e.state in _USABLE for e in stats.endpoints):
        io.err(f"error: UNAVAILABLE: no usable endpoint for {args.target} within {args.wait} s")
        return EXIT_UNAVAILABLE
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _stats)
