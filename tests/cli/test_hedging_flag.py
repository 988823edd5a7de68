"""--no-hedging: a connection option that turns hedging off for every command."""

from __future__ import annotations

import io

import pytest

from client.cli import build_parser, main_async
from client.cli._common import Io, _client, hoist_connection_options

TARGET = ["--target", "static:///127.0.0.2:50051"]


async def _hedged_methods(argv: list[str]) -> set[str]:
    args = build_parser({}).parse_args(hoist_connection_options(argv))
    client = _client(args, Io(io.StringIO(), io.StringIO(), io.StringIO(), {}))
    try:
        return set(client.stats().hedging)
    finally:
        await client.close()


async def test_hedging_is_on_by_default() -> None:
    assert await _hedged_methods(["get", "u1", *TARGET]) == {"GetUser", "ListUsers"}


@pytest.mark.parametrize(
    "argv",
    [["--no-hedging", "get", "u1", *TARGET], ["get", "u1", "--no-hedging", *TARGET]],
    ids=["before the command", "after it"],
)
async def test_no_hedging_turns_every_method_off(argv: list[str]) -> None:
    assert await _hedged_methods(argv) == set()


@pytest.mark.parametrize("command", ["get", "list", "load"])
async def test_the_flag_is_in_each_connected_commands_help(command: str) -> None:
    out = io.StringIO()
    assert await main_async([command, "--help"], env={}, stdout=out, stderr=io.StringIO()) == 0
    assert "--no-hedging" in out.getvalue() and "docs/hedging.md" in out.getvalue()
