"""``python -m client`` (``meshdemo``): every RPC from the shell, a dev token, a load run.

Output is human-readable by default and one JSON object per line with
``--json``. A failed call prints one ``error: CODE: message`` line on stderr
(and one indented line per field violation) and exits with the code of its
class; see :data:`EXIT_CODES`. ``--timeout`` is the deadline of each call and
bounds the whole command too: past it, one ``error: DEADLINE_EXCEEDED: ...``
line and exit code 3.

Layout: one module per command (``get``, ``create``, ``list_users`` for ``list``, ``batch``,
``chat``, ``token``, ``stats``, ``load``, ``chaos``, ``certs``), each with ``NAME``,
``add_parser(commands, parent)``, ``budget(args)`` (the seconds the whole
command may take, None for no bound) and ``run(args, io)``; a new command is a
new module listed in :data:`COMMANDS`. ``_common`` holds what they share: exit
codes, errors, IO, the client and its tracing, output.

Connection options (``--target``, ``--token``, ...) are declared once, in
``_common.connection_options``: a new one (a TLS flag, say) is one
``add_argument`` there; every command that talks to the service gets it, its
--help lists it, and it may be written before the command as well
(``hoist_connection_options`` reads the same declaration). What the client is
built with is read from the parsed options in one place too, ``_common._client``.

``--timeout`` and the whole-command deadline: each command's ``budget`` is the
most its run may take (one call: --timeout plus a set-up grace; ``stats``:
--wait on top; ``load``: seeding, --duration and the drain; ``chaos``: its
rounds). ``_common.Deadline`` enforces it around the client's whole life;
``list --all`` renews it per page and ``chat`` runs it only while the server
owes an answer. Past it: ``error: DEADLINE_EXCEEDED: ...`` and exit code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from client._errors import MeshError
from client.cli import batch, certs, chaos, chat, create, get, list_users, load, stats, token
from client.cli._common import (
    DEFAULT_TARGET,
    EXIT_AUTH,
    EXIT_CLOSED_PIPE,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RPC,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Command,
    CommandDeadline,
    Deadline,
    Io,
    UsageError,
    clean_token,
    connection_options,
    connection_parent,
    epilog,
    exit_code_for,
    hoist_connection_options,
    report_error,
    user_dict,
)
from client.cli.batch import read_batch

__all__ = [
    "COMMANDS",
    "DEFAULT_TARGET",
    "EXIT_AUTH",
    "EXIT_CLOSED_PIPE",
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RPC",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "clean_token",
    "connection_options",
    "epilog",
    "exit_code_for",
    "hoist_connection_options",
    "main",
    "main_async",
    "read_batch",
    "user_dict",
]

#: The commands, in the order --help lists them.
COMMANDS: Mapping[str, Command] = {
    module.NAME: module
    for module in (get, create, list_users, batch, chat, token, stats, load, chaos, certs)
}


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults that come from the environment are read from ``env``."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="meshdemo",
        description="Talk to the meshdemo user service: one call, a chat, a token, or a load run. "
        "The connection options (--target, --token, --policy, --timeout, --json) may come "
        "before the command or after it.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = connection_parent(env)
    for command in COMMANDS.values():
        command.add_parser(commands, parent)
    return parser


def _parse(argv: Sequence[str], io: Io) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse exits (--help, bad usage)."""
    parser = build_parser(io.env)
    with contextlib.redirect_stdout(io.stdout), contextlib.redirect_stderr(io.stderr):
        try:
            return parser.parse_args(hoist_connection_options(argv))
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE


async def _run(args: argparse.Namespace, io: Io) -> int:
    command = COMMANDS[args.command]
    io.deadline = Deadline(command.budget(args), args.command)
    return await command.run(args, io)


async def main_async(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command in the running event loop; the exit code (see :data:`EXIT_CODES`).

    Streams and environment default to the process's own; tests pass their own.
    """
    io = Io(
        stdin=stdin or sys.stdin,
        stdout=stdout or sys.stdout,
        stderr=stderr or sys.stderr,
        env=os.environ if env is None else env,
    )
    parsed = _parse(sys.argv[1:] if argv is None else argv, io)
    if isinstance(parsed, int):
        return parsed
    try:
        return await _run(parsed, io)
    except MeshError as err:
        return report_error(io, err)
    except UsageError as err:
        io.err(f"error: {err}")
        return EXIT_USAGE
    except CommandDeadline as err:
        io.err(f"error: {err}")
        return EXIT_UNAVAILABLE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``meshdemo`` / ``python -m client`` entry point; the exit code."""
    try:
        return asyncio.run(main_async(argv))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`list --json | head -1`): stop quietly, as `ls | head` does.
        # Point stdout at /dev/null so the interpreter's last flush does not complain too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
