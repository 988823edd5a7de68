"""``create``: create one user (an admin token)."""

from __future__ import annotations

import argparse
from typing import Any

from client._client import ROLES, UserClient
from client.cli._common import (
    EXIT_OK,
    Io,
    add_command,
    one_call_budget,
    print_user,
    run_with_client,
)

NAME = "create"


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(commands, NAME, parent, "create one user (needs an admin token)")
    cmd.add_argument("--name", required=True, help="display name, 1 to 100 characters (required)")
    cmd.add_argument("--email", required=True, help="e-mail address, unique (required)")
    cmd.add_argument("--age", type=int, required=True, help="age in years, 0 to 150 (required)")
    cmd.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=sorted(ROLES),
        help="a role of the user; repeat for several: %(choices)s (default: user)",
    )
    cmd.add_argument(
        "--request-id",
        default=None,
        help="idempotency key: the same key again returns the same user "
        "(default: a random one per invocation)",
    )


budget = one_call_budget


async def _create(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    user = await client.create_user(
        args.name,
        args.email,
        args.age,
        tuple(args.roles or ("user",)),
        request_id=args.request_id,
        timeout=args.timeout,
    )
    print_user(io, user, args.json)
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _create)
