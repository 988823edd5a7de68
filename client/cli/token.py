"""``token``: mint a signed development JWT, offline."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from client._client import ROLES
from client._token import mint_token
from client.cli._common import EXIT_OK, Io, UsageError, epilog, positive_float

NAME = "token"
#: The service refuses HS256 secrets shorter than this (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    del parent  # no connection: the token is made here
    cmd = commands.add_parser(
        NAME,
        help="print a signed dev JWT (offline, no target)",
        description="Print an HS256 JWT the replicas accept; works offline.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--secret",
        default=None,
        help=f"the replicas' shared secret, at least {MIN_SECRET_BYTES} bytes "
        "(default: $MESH_AUTH_SECRET; required when unset)",
    )
    cmd.add_argument(
        "--sub", default="dev", help="subject: who the caller is (default: %(default)s)"
    )
    cmd.add_argument(
        "--roles",
        default="admin",
        help=f"comma-separated roles among {', '.join(sorted(ROLES))} (default: %(default)s)",
    )
    cmd.add_argument(
        "--ttl",
        type=positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds until the token expires (default: %(default)s)",
    )
    cmd.add_argument(
        "--json",
        action="store_true",
        help="print {token, sub, roles, expires_at} as JSON (default: the bare token)",
    )


def budget(args: argparse.Namespace) -> None:
    """Offline and immediate: no deadline."""
    del args


async def run(args: argparse.Namespace, io: Io) -> int:
    secret = args.secret if args.secret is not None else io.env.get("MESH_AUTH_SECRET", "")
    if not secret:
        raise UsageError("no secret: pass --secret or set MESH_AUTH_SECRET")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise UsageError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise UsageError(f"--roles must name roles among {sorted(ROLES)}, got {args.roles!r}")
    if not args.sub:
        raise UsageError("--sub must not be empty")
    token = mint_token(secret, args.sub, roles, args.ttl)
    if args.json:
        expires = int(time.time() + args.ttl)
        io.out(json.dumps({"token": token, "sub": args.sub, "roles": roles, "expires_at": expires}))
    else:
        io.out(token)
    return EXIT_OK
