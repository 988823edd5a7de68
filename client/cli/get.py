"""``get ID``: fetch one user."""

from __future__ import annotations

import argparse
from typing import Any

from client._client import UserClient
from client.cli._common import (
    EXIT_OK,
    Io,
    add_command,
    one_call_budget,
    print_user,
    run_with_client,
)

NAME = "get"


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(commands, NAME, parent, "fetch one user by id")
    cmd.add_argument("id", help="the user's id")


budget = one_call_budget


async def _get(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    user = await client.get_user(args.id, timeout=args.timeout)
    print_user(io, user, args.json)
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _get)
