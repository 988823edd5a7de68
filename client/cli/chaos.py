"""``chaos``: kill pods one at a time (the plan and the API calls are in ``client._chaos``).

Its --timeout is the deadline of each Kubernetes API call; the whole command
ends within the plan's own bound (see :func:`budget`). The API calls run in
threads that a deadline cannot interrupt, so the bound counts every wait they
may make.
"""

from __future__ import annotations

import argparse
from typing import Any

from client._chaos import MAX_COUNT, add_chaos_command, run_chaos_command
from client.cli._common import Io

NAME = "chaos"
#: API calls in one round (list the pods, then delete or evict one).
_CALLS_PER_ROUND = 2
#: Waits of one call: it is tried once (client._chaos_k8s turns urllib3's retries off),
#: and the try may take --timeout to connect, then --timeout for the answer.
_WAITS_PER_CALL = 2


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    del parent  # it talks to the Kubernetes API, not to the replicas
    add_chaos_command(commands)


def budget(args: argparse.Namespace) -> float:
    """The plan's bound: its rounds' API calls and the intervals between them, or
    its duration and the calls of the round that starts last."""
    per_round: float = _CALLS_PER_ROUND * _WAITS_PER_CALL * args.timeout
    rounds = args.count or MAX_COUNT
    by_count: float = rounds * per_round + (rounds - 1) * args.interval
    if args.duration is None:
        return by_count
    by_duration: float = args.duration + per_round
    return min(by_count, by_duration)


async def run(args: argparse.Namespace, io: Io) -> int:
    async with io.deadline.bound():
        return await run_chaos_command(args, io.out, io.err)
