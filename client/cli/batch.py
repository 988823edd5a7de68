"""``batch FILE``: create users from JSON lines in one transaction (an admin token)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, TextIO

from client._client import MAX_BATCH, ROLES, NewUserSpec, UserClient
from client.cli._common import (
    EXIT_OK,
    Io,
    UsageError,
    add_command,
    one_call_budget,
    print_user,
    run_with_client,
)

NAME = "batch"


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(
        commands,
        NAME,
        parent,
        "create users from a JSON-lines file in one transaction (needs an admin token)",
        epilog_extra="each line: "
        '{"name": .., "email": .., "age": .., "roles": ["user"], "request_id": ..}\n'
        "(roles and request_id optional). Every bad line is reported with its number\n"
        f"and nothing is sent. At most {MAX_BATCH} users.",
    )
    cmd.add_argument("file", help="the JSON-lines file; - reads standard input")


budget = one_call_budget


@dataclass(frozen=True)
class _BatchLine:
    number: int
    spec: NewUserSpec | None = None
    problem: str = ""


_BATCH_KEYS = frozenset({"name", "email", "age", "roles", "request_id"})


def _batch_problem(data: object) -> str:
    """Why a decoded line is not a user, or '' when it is one."""
    if not isinstance(data, dict):
        return "not a JSON object"
    unknown = sorted(set(data) - _BATCH_KEYS)
    missing = sorted({"name", "email", "age"} - set(data))
    roles = data.get("roles", ["user"])
    if unknown:
        return f"unknown field(s) {unknown}"
    if missing:
        return f"missing field(s) {missing}"
    if not isinstance(data["name"], str) or not isinstance(data["email"], str):
        return "name and email must be strings"
    if isinstance(data["age"], bool) or not isinstance(data["age"], int):
        return "age must be an integer"
    if not isinstance(roles, list) or not all(r in ROLES for r in roles):
        return f"roles must be a list of {sorted(ROLES)}"
    if data.get("request_id") is not None and not isinstance(data["request_id"], str):
        return "request_id must be a string"
    return ""


def _parse_batch_line(number: int, text: str) -> _BatchLine:
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _BatchLine(number, problem=f"invalid JSON: {exc}")
    problem = _batch_problem(data)
    if problem:
        return _BatchLine(number, problem=problem)
    spec = NewUserSpec(
        data["name"],
        data["email"],
        data["age"],
        tuple(data.get("roles", ["user"])),
        data.get("request_id"),
    )
    return _BatchLine(number, spec)


def read_batch(stream: TextIO) -> list[NewUserSpec]:
    """Parse a JSON-lines batch; blank lines are skipped.

    Raises:
        UsageError: Listing every bad line by its 1-based number, or the batch is
            empty or too large.
    """
    lines = [
        _parse_batch_line(number, text)
        for number, text in enumerate(stream, start=1)
        if text.strip()
    ]
    problems = [f"line {line.number}: {line.problem}" for line in lines if line.problem]
    if problems:
        raise UsageError("bad batch input, nothing sent:\n  " + "\n  ".join(problems))
    specs = [line.spec for line in lines if line.spec is not None]
    if not specs:
        raise UsageError("the batch holds no user")
    if len(specs) > MAX_BATCH:
        raise UsageError(f"a batch holds at most {MAX_BATCH} users, got {len(specs)}")
    return specs


def _read_batch_file(path: str, io: Io) -> list[NewUserSpec]:
    if path == "-":
        return read_batch(io.stdin)
    try:
        with open(path, encoding="utf-8") as stream:
            return read_batch(stream)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc}") from exc


async def _batch(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    users = await client.batch_create_users(args.specs, timeout=args.timeout)
    for user in users:
        print_user(io, user, args.json)
    if not args.json:
        io.err(f"created {len(users)} users")
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    # Read and check the whole file before any connection is made.
    args.specs = _read_batch_file(args.file, io)
    return await run_with_client(args, io, _batch)
