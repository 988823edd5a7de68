"""--help of every command describes every option; ``token`` mints what the service verifies."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time

import pytest

from client.cli import EXIT_CODES, EXIT_OK, EXIT_USAGE, build_parser, main_async
from service.auth import TokenVerifier
from service.errors import Unauthenticated
from tests.cli.conftest import Cli

SECRET = "a-dev-secret-that-is-long-enough-for-hs256"
COMMANDS = ("get", "create", "list", "batch", "chat", "token", "stats", "load", "chaos", "certs")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser({})
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


async def _help(*argv: str) -> str:
    out = io.StringIO()
    code = await main_async([*argv, "--help"], env={}, stdout=out, stderr=io.StringIO())
    assert code == EXIT_OK
    return out.getvalue()


def test_every_command_is_there() -> None:
    assert tuple(_subparsers()) == COMMANDS


async def test_root_help_lists_commands_env_and_exit_codes() -> None:
    text = await _help()
    for expected in (*COMMANDS, "MESH_TARGET", "MESH_TOKEN", "MESH_AUTH_SECRET"):
        assert expected in text
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in text


@pytest.mark.parametrize("command", COMMANDS)
async def test_help_describes_every_option_with_its_default(command: str) -> None:
    text = " ".join((await _help(command)).split())
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest} has no help"
        for flag in action.option_strings:
            assert flag in text, f"{command} --help does not mention {flag}"
        if action.option_strings:
            help_text = action.help.lower()
            assert "default" in help_text or "required" in help_text, (command, action.dest)
    assert "exit codes" in text


# token, chaos and certs talk to no replica (chaos talks to the Kubernetes API).
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("token", "chaos", "certs")])
async def test_connection_options_name_their_env_vars(command: str) -> None:
    text = " ".join((await _help(command)).split())
    for flag in ("--target", "--token", "--policy", "--timeout", "--json"):
        assert flag in text
    assert "$MESH_TARGET" in text
    assert "$MESH_TOKEN" in text
    assert "dns:///localhost:50051" in text


async def test_target_default_comes_from_the_environment() -> None:
    out = io.StringIO()
    env = {"MESH_TARGET": "static:///127.0.0.9:1"}
    await main_async(["get", "--help"], env=env, stdout=out, stderr=io.StringIO())
    assert "static:///127.0.0.9:1" in out.getvalue()


async def test_token_verifies_with_the_service(offline_cli: Cli) -> None:
    result = await offline_cli("token", "--secret", SECRET, "--sub", "ops", "--roles", "admin,user")
    assert result.code == EXIT_OK, result.err
    principal = TokenVerifier(SECRET).verify(f"Bearer {result.out.strip()}")
    assert principal.sub == "ops"
    assert principal.roles == frozenset({"admin", "user"})
    with pytest.raises(Unauthenticated):
        TokenVerifier("another-secret-that-is-long-enough-too").verify(
            f"Bearer {result.out.strip()}"
        )


async def test_token_reads_the_secret_from_the_environment_and_prints_json() -> None:
    cli = Cli({"MESH_AUTH_SECRET": SECRET})
    result = await cli("token", "--ttl", "60", "--json")
    document = json.loads(result.out)
    assert document["sub"] == "dev"
    assert document["roles"] == ["admin"]
    assert abs(document["expires_at"] - (time.time() + 60)) < 5
    assert TokenVerifier(SECRET).verify(f"Bearer {document['token']}").sub == "dev"


async def test_an_expired_token_is_refused() -> None:
    result = await Cli({"MESH_AUTH_SECRET": SECRET})("token", "--ttl", "0.001")
    await asyncio.sleep(0.01)
    verifier = TokenVerifier(SECRET, leeway_s=0)
    with pytest.raises(Unauthenticated):
        verifier.verify(f"Bearer {result.out.strip()}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("token",), "no secret"),
        (("token", "--secret", "short"), "at least 32 bytes"),
        (("token", "--secret", SECRET, "--roles", "admin,king"), "--roles"),
        (("token", "--secret", SECRET, "--roles", ","), "--roles"),
        (("token", "--secret", SECRET, "--sub", ""), "--sub"),
        (("token", "--secret", SECRET, "--ttl", "-5"), "--ttl"),
    ],
)
async def test_token_refuses_bad_input(
    offline_cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    result = await offline_cli(*argv)
    assert result.code == EXIT_USAGE
    assert message in result.err
    assert result.out == ""
