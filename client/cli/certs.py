"""``certs``: write a development CA, a server and a client certificate (offline).

The work is ``client._certs``; this module only registers the command.
"""

from __future__ import annotations

import argparse
from typing import Any

from client._certs import add_certs_parser, run_certs
from client.cli._common import Io

NAME = "certs"


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    del parent  # no connection: the files are written here
    add_certs_parser(commands)


def budget(args: argparse.Namespace) -> None:
    """Offline and immediate: no deadline."""
    del args


async def run(args: argparse.Namespace, io: Io) -> int:
    return run_certs(args, io.stdout, io.stderr)
