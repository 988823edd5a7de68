"""What a new user hits first: options before the command, a pasted token, a closed pipe."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from client.cli import (
    EXIT_CLOSED_PIPE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    clean_token,
    hoist_connection_options,
)
from service.testing import admin_token
from tests.cli.conftest import Cli, Mesh


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--target", "T", "--token", "X", "get"], ["get", "--target", "T", "--token", "X"]),
        (["--target=T", "--json", "list", "--all"], ["list", "--target=T", "--json", "--all"]),
        (["get", "--target", "T", "u1"], ["get", "--target", "T", "u1"]),
        (["--help"], ["--help"]),
        (["--target"], ["--target"]),  # argparse says what is missing
        (["--bogus", "get"], ["--bogus", "get"]),
    ],
)  # fmt: skip
def test_connection_options_before_the_command_move_after_it(
    argv: list[str], expected: list[str]
) -> None:
    assert hoist_connection_options(argv) == expected


async def test_the_readme_form_with_options_first_works(cli: Cli, mesh: Mesh) -> None:
    created = await cli(
        "--target", mesh.target, "--token", admin_token(), "create",
        "--name", "Ada", "--email", "ada@example.com", "--age", "36",
    )  # fmt: skip
    assert created.code == EXIT_OK, created.err
    # Options after the command still win.
    wrong_first = await cli("--target", "static:///127.0.0.1:1", "list", "--target", mesh.target)
    assert wrong_first.code == EXIT_OK, wrong_first.err
    assert "ada@example.com" in wrong_first.out


@pytest.mark.parametrize(
    "pasted",
    [
        lambda t: t + "\r\n",
        lambda t: f"  {t}  ",
        lambda t: f"Bearer {t}",
        lambda t: f"bearer {t}\n",
    ],
)
async def test_a_pasted_token_is_cleaned(cli: Cli, pasted: object) -> None:
    token = pasted(admin_token())  # type: ignore[operator]
    result = await cli("list", "--token", token)
    assert result.code == EXIT_OK, result.err


@pytest.mark.parametrize("bad", ["not-a-jwt", "a.b", "a.b.c.d", "a.b.c d", "a.b.c\x00"])
async def test_a_malformed_token_is_refused_before_anything_is_sent(
    offline_cli: Cli, bad: str
) -> None:
    # The target names a port nobody listens on: were anything dialled, the error would differ.
    result = await offline_cli("get", "u1", "--token", bad, "--target", "static:///127.0.0.1:1")
    assert result.code == EXIT_USAGE
    assert result.err.startswith("error: --token is not a token (expected header.claims.signature")
    assert len(result.err.strip().splitlines()) == 1


def test_clean_token_names_its_source_and_treats_empty_as_none() -> None:
    assert clean_token("  \r\n", "MESH_TOKEN") is None
    assert clean_token(None, "MESH_TOKEN") is None
    with pytest.raises(UsageError, match=r"^MESH_TOKEN is not a token"):
        clean_token("x", "MESH_TOKEN")


@pytest.mark.slow
async def test_a_closed_pipe_ends_quietly(mesh: Mesh) -> None:
    env = {**os.environ, "MESH_TARGET": mesh.target, "MESH_TOKEN": admin_token()}
    for n in range(3):  # more lines than the reader takes
        await Cli(env)("create", "--name", f"P{n}", "--email", f"p{n}@x.io", "--age", "9")
    read, write = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "list", "--json",
        stdout=write, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        # `| head -1`, off the loop: the replicas answer on it.
        assert (await asyncio.to_thread(reader.readline)).startswith(b"{")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode in (EXIT_CLOSED_PIPE, EXIT_OK), err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
