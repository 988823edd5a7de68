"""``list``: users in id order, one page or (``--all``) page after page."""

from __future__ import annotations

import argparse
from typing import Any

from client._client import UserClient
from client.cli._common import (
    EXIT_OK,
    Io,
    add_command,
    int_in,
    one_call_budget,
    print_user,
    run_with_client,
)

NAME = "list"
#: Most users ``list --all`` prints, so the loop is bounded whatever the store holds.
MAX_LISTED = 1_000_000
#: The server's page size when the request leaves it at 0.
_SERVER_PAGE = 100


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(
        commands,
        NAME,
        parent,
        "list users in id order",
        epilog_extra="--timeout bounds each page: the command fails with DEADLINE_EXCEEDED\n"
        "when a page (its stream to the end) takes longer.",
    )
    cmd.add_argument(
        "--page-size",
        type=int_in(0, 1000),
        default=0,
        metavar="N",
        help="users per page, 0 to 1000; 0 means the server's default, 100 (default: %(default)s)",
    )
    cmd.add_argument(
        "--page-token",
        default="",
        metavar="T",
        help="resume after the user this token came with (default: from the first user)",
    )
    cmd.add_argument(
        "--all",
        action="store_true",
        help=f"follow page after page to the end, at most {MAX_LISTED} users (default: one page)",
    )


#: A page is one call; ``--all`` renews the deadline after each page.
budget = one_call_budget


async def _list_page(
    client: UserClient, args: argparse.Namespace, io: Io, token: str
) -> tuple[int, str]:
    """Print one page; (users printed, the token that resumes after it)."""
    count = 0
    listing = client.list_users(page_size=args.page_size, page_token=token, timeout=args.timeout)
    async for user in listing:
        print_user(io, user, args.json)
        count += 1
    return count, listing.next_page_token


async def _list(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    page = args.page_size or _SERVER_PAGE
    token, listed = args.page_token, 0
    while listed < MAX_LISTED:
        count, token = await _list_page(client, args, io, token)
        listed += count
        if count < page:
            return EXIT_OK
        if not args.all:
            io.err(f"next page: --page-token {token}")
            return EXIT_OK
        io.deadline.renew(budget(args))
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _list)
