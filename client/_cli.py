"""``python -m client`` (``meshdemo``): every RPC from the shell, a dev token, a load run.

Output is human-readable by default and one JSON object per line with
``--json``. A failed call prints one ``error: CODE: message`` line on stderr
(and one indented line per field violation) and exits with the code of its
class; see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import grpc
from opentelemetry.sdk.trace import TracerProvider
from rich.console import Console

from client._certs import add_certs_parser, run_certs
from client._chaos import add_chaos_command as _add_chaos
from client._chaos import run_chaos_command
from client._client import MAX_BATCH, ROLES, NewUserSpec, UserClient
from client._errors import InvalidArgumentError, MeshError
from client._live import LiveView, PlainProgress, render_summary
from client._load import DEFAULT_MIX, LoadConfig, LoadSnapshot, LoadSummary, parse_mix, run_load
from client._picker import PICKERS
from client._resolver import TARGET_FORMS, TargetError
from client._tls import add_tls_arguments, tls_from_args
from client._token import mint_token
from meshdemo.telemetry import configure_tracing, export_enabled, shutdown_tracing
from meshdemo.v1 import user_pb2

__all__ = [
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
    "exit_code_for",
    "hoist_connection_options",
    "main",
    "main_async",
    "read_batch",
    "user_dict",
]

#: Target used when neither --target nor MESH_TARGET is given.
DEFAULT_TARGET = "dns:///localhost:50051"
EXIT_OK = 0
#: The call failed with a status not listed below (NOT_FOUND, INVALID_ARGUMENT, ...).
EXIT_RPC = 1
#: Bad command line or input file; nothing was sent.
EXIT_USAGE = 2
#: No replica answered in time (UNAVAILABLE, DEADLINE_EXCEEDED): worth retrying later.
EXIT_UNAVAILABLE = 3
#: The token is missing, invalid or lacks a role (UNAUTHENTICATED, PERMISSION_DENIED).
EXIT_AUTH = 4
#: Interrupted by Ctrl-C.
EXIT_INTERRUPTED = 130
#: The reader of stdout went away (a closed pipe), as SIGPIPE would end the process.
EXIT_CLOSED_PIPE = 141
EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "success",
    EXIT_RPC: "the call failed (NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS, INTERNAL, ...)",
    EXIT_USAGE: "usage error: bad option, target or input file; nothing was sent",
    EXIT_UNAVAILABLE: "no replica answered in time (UNAVAILABLE, DEADLINE_EXCEEDED)",
    EXIT_AUTH: "bad or missing token, or a missing role (UNAUTHENTICATED, PERMISSION_DENIED)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_CLOSED_PIPE: "stdout was closed by its reader (e.g. `| head`); output stopped there",
}
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_AUTH = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
#: The service refuses HS256 secrets shorter than this (RFC 7518 section 3.2).
_MIN_SECRET_BYTES = 32
#: Most users ``list --all`` prints, so the loop is bounded whatever the store holds.
_MAX_LISTED = 1_000_000
_ROLE_NAMES = {value: name for name, value in ROLES.items()}


def exit_code_for(code: grpc.StatusCode) -> int:
    """The process exit code for a call that failed with ``code``."""
    if code in _TRANSIENT:
        return EXIT_UNAVAILABLE
    if code in _AUTH:
        return EXIT_AUTH
    return EXIT_RPC


class UsageError(Exception):
    """Bad input found before anything was sent (exit code 2)."""


@dataclass
class _Io:
    """The process's streams and environment (injectable for tests)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]

    def out(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def err(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)


# --- the parser --------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def _mix(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        "environment:\n"
        "  MESH_TARGET       default --target\n"
        "  MESH_TOKEN        default --token\n"
        "  MESH_AUTH_SECRET  default --secret of `token`\n"
        "  MESH_TLS_CA_FILE, MESH_TLS_CLIENT_CERT_FILE, MESH_TLS_CLIENT_KEY_FILE,\n"
        "  MESH_TLS_SERVER_NAME  default --tls-ca, --tls-cert, --tls-key, --tls-server-name\n"
        "  OTEL_EXPORTER_OTLP_ENDPOINT  export spans of every call over OTLP/gRPC\n"
        "                    (service name meshdemo-client; other OTEL_* variables apply)\n\n"
        f"exit codes:\n{codes}"
    )


def _connection_options(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Options every command that talks to the service takes."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=env.get("MESH_TARGET", DEFAULT_TARGET),
        help=f"where the replicas are: {TARGET_FORMS} "
        f"(default: $MESH_TARGET, else {DEFAULT_TARGET}; now %(default)s)",
    )
    group.add_argument(
        "--token",
        default=None,
        help="bearer token sent on every call (default: $MESH_TOKEN; none when unset)",
    )
    group.add_argument(
        "--policy",
        choices=PICKERS,
        default="least_conn",
        help="how a replica is picked for each call: %(choices)s (default: %(default)s)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each call in seconds (default: %(default)s)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: one JSON object per user or line (default: off)",
    )
    add_tls_arguments(parent, env)
    return parent


def _add_get(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(commands, "get", parent, "fetch one user by id")
    cmd.add_argument("id", help="the user's id")


def _add_create(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(commands, "create", parent, "create one user (needs an admin token)")
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


def _add_list(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(commands, "list", parent, "list users in id order")
    cmd.add_argument(
        "--page-size",
        type=_int_in(0, 1000),
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
        help=f"follow page after page to the end, at most {_MAX_LISTED} users (default: one page)",
    )


def _add_batch(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(
        commands,
        "batch",
        parent,
        "create users from a JSON-lines file in one transaction (needs an admin token)",
        epilog_extra="each line: "
        '{"name": .., "email": .., "age": .., "roles": ["user"], "request_id": ..}\n'
        "(roles and request_id optional). Every bad line is reported with its number\n"
        f"and nothing is sent. At most {MAX_BATCH} users.",
    )
    cmd.add_argument("file", help="the JSON-lines file; - reads standard input")


def _add_chat(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(
        commands,
        "chat",
        parent,
        "chat interactively: each stdin line is sent, each echo printed with its replica",
        epilog_extra="end of input (Ctrl-D) half-closes the stream; remaining echoes are\n"
        "printed, waiting at most --timeout seconds for them.",
    )
    cmd.add_argument(
        "--user-id", default="", help="sent as the speaker of every message (default: anonymous)"
    )


def _add_token(commands: Any, env: Mapping[str, str]) -> None:
    cmd = commands.add_parser(
        "token",
        help="print a signed dev JWT (offline, no target)",
        description="Print an HS256 JWT the replicas accept; works offline.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--secret",
        default=None,
        help="the replicas' shared secret, at least 32 bytes "
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
        type=_positive_float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds until the token expires (default: %(default)s)",
    )
    cmd.add_argument(
        "--json",
        action="store_true",
        help="print {token, sub, roles, expires_at} as JSON (default: the bare token)",
    )


def _add_stats(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(
        commands,
        "stats",
        parent,
        "resolve the target and print per-endpoint stats as JSON",
        epilog_extra="exits 3 when no endpoint is SERVING or READY at the end of the wait.",
    )
    cmd.add_argument(
        "--wait",
        type=_non_negative_float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for endpoints and their first health report (default: %(default)s)",
    )


def _add_load(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = _command(
        commands,
        "load",
        parent,
        "generate bounded load and show it live; print a summary at the end",
        epilog_extra="--timeout is the deadline of each operation. With --rps the load is an open\n"
        "loop: calls are scheduled at the rate whatever the server does, and calls\n"
        "that start late (all workers busy) are counted as late. Without it, a closed\n"
        "loop.\n\n"
        "While it runs: a live view when stdout is a terminal (rate and share per\n"
        "endpoint, its state, an event line for each endpoint lost, ejected,\n"
        "re-admitted, draining, added or removed); otherwise plain lines on stderr\n"
        "(the same events as they happen, figures per endpoint each interval).\n"
        "At the end: a human summary on stdout (calls, latency per operation, per\n"
        "endpoint calls, failures, ejections and final state, the seed); with --json\n"
        "the summary JSON on one line instead. --summary FILE also writes the JSON.\n"
        "Ctrl-C stops the run: the summary of what finished, then exit 130.",
    )
    mix = ",".join(f"{name}={weight}" for name, weight in DEFAULT_MIX)
    cmd.add_argument(
        "--duration",
        type=_positive_float,
        required=True,
        metavar="SECONDS",
        help="how long the load runs, in seconds (required)",
    )
    cmd.add_argument(
        "--rps",
        type=_non_negative_float,
        default=0.0,
        help="target operations per second; 0 = as fast as the concurrency allows "
        "(default: %(default)s)",
    )
    cmd.add_argument(
        "--concurrency",
        type=_int_in(1, 10_000),
        default=8,
        metavar="N",
        help="operations in flight at most (default: %(default)s)",
    )
    cmd.add_argument(
        "--max-calls",
        type=_int_in(1, 100_000_000),
        default=1_000_000,
        metavar="N",
        help="stop after starting this many operations (default: %(default)s)",
    )
    cmd.add_argument(
        "--mix",
        type=_mix,
        default=DEFAULT_MIX,
        help=f"operation weights among get, create, list, batch, chat (default: {mix})",
    )
    cmd.add_argument(
        "--seed-users",
        type=_int_in(0, 100_000),
        default=10,
        metavar="N",
        help="create N users before the run so gets hit real ids (default: %(default)s)",
    )
    cmd.add_argument(
        "--summary",
        default=None,
        metavar="FILE",
        help="write the summary JSON to FILE (default: none; --json prints it on stdout)",
    )
    cmd.add_argument(
        "--no-live",
        action="store_true",
        help="plain progress lines on stderr instead of the live view "
        "(default: live view when stdout is a terminal)",
    )
    cmd.add_argument(
        "--refresh",
        type=_positive_float,
        default=0.25,
        metavar="SECONDS",
        help="seconds between snapshots (live view refreshes, event checks); plain "
        "figures come at most once a second (default: %(default)s)",
    )
    cmd.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the random operation choice, for repeatable runs (default: drawn "
        "at random and shown in the summary)",
    )


def _command(
    commands: Any,
    name: str,
    parent: argparse.ArgumentParser,
    summary: str,
    *,
    epilog_extra: str = "",
) -> argparse.ArgumentParser:
    epilog = f"{epilog_extra}\n\n{_epilog()}" if epilog_extra else _epilog()
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[parent],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults that come from the environment are read from ``env``."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="meshdemo",
        description="Talk to the meshdemo user service: one call, a chat, a token, or a load run. "
        "The connection options (--target, --token, --policy, --timeout, --json) may come "
        "before the command or after it.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = _connection_options(env)
    _add_get(commands, parent)
    _add_create(commands, parent)
    _add_list(commands, parent)
    _add_batch(commands, parent)
    _add_chat(commands, parent)
    _add_token(commands, env)
    _add_stats(commands, parent)
    _add_load(commands, parent)
    _add_chaos(commands)
    add_certs_parser(commands)
    return parser


# --- output ------------------------------------------------------------------------------------


def user_dict(user: user_pb2.User) -> dict[str, Any]:
    """A user as JSON-ready values; roles by their client-API names."""
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "age": user.age,
        "roles": [_ROLE_NAMES.get(role, str(role)) for role in user.roles],
        "created_at": user.created_at.ToJsonString() if user.HasField("created_at") else None,
    }


def _print_user(io: _Io, user: user_pb2.User, as_json: bool) -> None:
    data = user_dict(user)
    if as_json:
        io.out(json.dumps(data))
        return
    roles = ",".join(data["roles"])
    io.out(
        f"{data['id']}  {data['name']} <{data['email']}>  age {data['age']}  "
        f"roles {roles}  created {data['created_at']}"
    )


def _report_error(io: _Io, err: MeshError) -> int:
    io.err(f"error: {err.code.name}: {err.message}")
    if isinstance(err, InvalidArgumentError):
        for violation in err.field_violations:
            io.err(f"  {violation.field}: {violation.description}")
    return exit_code_for(err.code)


# --- commands ----------------------------------------------------------------------------------


_JWT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


def clean_token(raw: str | None, source: str) -> str | None:
    """The bearer token as sent: surrounding whitespace (a pasted CR/LF) and a ``Bearer ``
    prefix removed. None when empty.

    Raises:
        UsageError: Not a JWT (three base64url segments): grpcio would refuse the
            header on every call, so nothing is sent.
    """
    token = (raw or "").strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3 or not all(_JWT_SEGMENT.match(part) for part in parts):
        raise UsageError(
            f"{source} is not a token (expected header.claims.signature, base64url); "
            "mint one with `meshdemo token`"
        )
    return token


def _client(
    args: argparse.Namespace, io: _Io, tracer_provider: TracerProvider | None = None
) -> UserClient:
    if args.token is not None:
        token = clean_token(args.token, "--token")
    else:
        token = clean_token(io.env.get("MESH_TOKEN"), "MESH_TOKEN")
    try:
        return UserClient(
            args.target,
            token=token,
            policy=args.policy,
            tracer_provider=tracer_provider,
            tracing=tracer_provider is not None,
            tls=tls_from_args(args),
        )
    except TargetError as exc:
        raise UsageError(f"bad --target: {exc}") from exc
    except ValueError as exc:  # TLS files
        raise UsageError(f"TLS: {exc}") from exc


async def _cmd_get(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    user = await client.get_user(args.id, timeout=args.timeout)
    _print_user(io, user, args.json)
    return EXIT_OK


async def _cmd_create(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    user = await client.create_user(
        args.name,
        args.email,
        args.age,
        tuple(args.roles or ("user",)),
        request_id=args.request_id,
        timeout=args.timeout,
    )
    _print_user(io, user, args.json)
    return EXIT_OK


async def _list_page(
    client: UserClient, args: argparse.Namespace, io: _Io, token: str
) -> tuple[int, str]:
    """Print one page; (users printed, the token that resumes after it)."""
    count = 0
    listing = client.list_users(page_size=args.page_size, page_token=token, timeout=args.timeout)
    async for user in listing:
        _print_user(io, user, args.json)
        count += 1
    return count, listing.next_page_token


async def _cmd_list(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    page = args.page_size or 100
    token, listed = args.page_token, 0
    while listed < _MAX_LISTED:
        count, token = await _list_page(client, args, io, token)
        listed += count
        if count < page:
            return EXIT_OK
        if not args.all:
            io.err(f"next page: --page-token {token}")
            return EXIT_OK
    return EXIT_OK


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


def _read_batch_file(path: str, io: _Io) -> list[NewUserSpec]:
    if path == "-":
        return read_batch(io.stdin)
    try:
        with open(path, encoding="utf-8") as stream:
            return read_batch(stream)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc}") from exc


async def _cmd_batch(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    users = await client.batch_create_users(args.specs, timeout=args.timeout)
    for user in users:
        _print_user(io, user, args.json)
    if not args.json:
        io.err(f"created {len(users)} users")
    return EXIT_OK


# --- chat ---------------------------------------------------------------------------------------


async def _stdin_lines(stream: TextIO) -> AsyncIterator[str]:
    """Lines of ``stream`` without blocking the loop: a daemon thread reads them.

    A daemon thread never keeps the process alive, even blocked on a terminal.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="chat-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def _print_reply(io: _Io, reply: user_pb2.ChatResponse, as_json: bool) -> None:
    message = reply.message
    stamp = message.timestamp.ToJsonString() if message.HasField("timestamp") else ""
    if as_json:
        data = {"replica": reply.replica, "timestamp": stamp, "user_id": message.user_id}
        io.out(json.dumps({**data, "text": message.text}))
    else:
        io.out(f"[{reply.replica} {stamp}] {message.text}")


async def _print_replies(session: Any, io: _Io, as_json: bool) -> int:
    count = 0
    async for reply in session:
        _print_reply(io, reply, as_json)
        count += 1
    return count


async def _send_lines(session: Any, io: _Io) -> int:
    sent = 0
    async for line in _stdin_lines(io.stdin):
        text = line.rstrip("\r\n")
        if text:
            await session.send(text)
            sent += 1
    await session.done_writing()
    return sent


async def _cmd_chat(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    async with client.chat(user_id=args.user_id) as session:
        printer = asyncio.create_task(_print_replies(session, io, args.json))
        try:
            await _send_lines(session, io)
            # After the half-close the server echoes what is left, then ends.
            async with asyncio.timeout(args.timeout):
                await asyncio.shield(printer)
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
    return EXIT_OK


# --- token and stats ----------------------------------------------------------------------------


def _cmd_token(args: argparse.Namespace, io: _Io) -> int:
    secret = args.secret if args.secret is not None else io.env.get("MESH_AUTH_SECRET", "")
    if not secret:
        raise UsageError("no secret: pass --secret or set MESH_AUTH_SECRET")
    if len(secret.encode()) < _MIN_SECRET_BYTES:
        raise UsageError(f"the secret must be at least {_MIN_SECRET_BYTES} bytes")
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


_SETTLING = frozenset({"CONNECTING"})
_USABLE = frozenset({"SERVING", "READY"})


async def _settled_stats(client: UserClient, wait: float) -> Any:
    """The client's stats once endpoints are known and past CONNECTING, or at ``wait``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        stats = client.stats()
        settled = stats.endpoints and not any(e.state in _SETTLING for e in stats.endpoints)
        if settled or loop.time() >= deadline:
            return stats
        await asyncio.sleep(0.05)


async def _cmd_stats(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    stats = await _settled_stats(client, args.wait)
    document = {
        "target": args.target,
        "policy": args.policy,
        "endpoints": [asdict(e) for e in stats.endpoints],
        "calls": stats.calls,
        "retries": stats.retries,
        "failures": stats.failures,
    }
    io.out(json.dumps(document) if args.json else json.dumps(document, indent=2))
    if not any(e.state in _USABLE for e in stats.endpoints):
        io.err(f"error: UNAVAILABLE: no usable endpoint for {args.target} within {args.wait} s")
        return EXIT_UNAVAILABLE
    return EXIT_OK


# --- load ---------------------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        duration=args.duration,
        rps=args.rps,
        concurrency=args.concurrency,
        max_calls=args.max_calls,
        mix=args.mix,
        seed_users=args.seed_users,
        call_timeout=args.timeout,
        tick_interval=args.refresh,
        policy=args.policy,
        seed=args.seed,
    )


def _load_exit(summary: LoadSummary) -> int:
    """130 after Ctrl-C; else 0 when any call succeeded, or the code of the commonest error."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.ok or not summary.failed:
        return EXIT_OK
    commonest = max(summary.errors_by_code.items(), key=lambda item: item[1])[0]
    code = grpc.StatusCode.__members__.get(commonest, grpc.StatusCode.UNKNOWN)
    return exit_code_for(code)


def _live_console(args: argparse.Namespace, io: _Io) -> Console | None:
    """The terminal console the live view draws on; None for plain lines."""
    if args.no_live or not io.stdout.isatty():
        return None
    return Console(file=io.stdout)


@contextlib.contextmanager
def _reporter(
    args: argparse.Namespace, io: _Io, console: Console | None
) -> Iterator[Callable[[LoadSnapshot], None]]:
    if console is None:
        yield PlainProgress(io.stderr, interval=max(args.refresh, 1.0)).update
        return
    with LiveView(console) as view:
        yield view.update


def _open_summary(path: str | None) -> TextIO | None:
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise UsageError(f"cannot write --summary {path}: {exc.strerror or exc}") from exc


async def _load_until_stopped(
    client: UserClient, config: LoadConfig, on_tick: Callable[[LoadSnapshot], None]
) -> LoadSummary:
    """Run the load; Ctrl-C (this task cancelled) stops it and returns the partial summary."""
    stop = asyncio.Event()
    running = asyncio.create_task(run_load(client, config, on_tick, stop=stop), name="load")
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        # The run ends promptly once stopped: running operations are cancelled.
        stop.set()
        summary = await running
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # handled here: the command ends with exit code 130
        return summary


def _print_summary(
    summary: LoadSummary, args: argparse.Namespace, io: _Io, console: Console | None
) -> None:
    if args.json:
        io.out(json.dumps(summary.as_dict()))
        return
    (console or Console(file=io.stdout, width=80)).print(render_summary(summary))


async def _cmd_load(args: argparse.Namespace, client: UserClient, io: _Io) -> int:
    config = _load_config(args)
    summary_file = _open_summary(args.summary)
    console = _live_console(args, io)
    try:
        with _reporter(args, io, console) as on_tick:
            summary = await _load_until_stopped(client, config, on_tick)
        if summary_file is not None:
            json.dump(summary.as_dict(), summary_file, indent=2)
            summary_file.write("\n")
    finally:
        if summary_file is not None:
            summary_file.close()
    _print_summary(summary, args, io, console)
    if summary.interrupted:
        io.err("interrupted: the summary counts the operations that finished")
    return _load_exit(summary)


# --- dispatch -----------------------------------------------------------------------------------

_Handler = Callable[[argparse.Namespace, UserClient, _Io], Awaitable[int]]
_HANDLERS: Mapping[str, _Handler] = {
    "get": _cmd_get,
    "create": _cmd_create,
    "list": _cmd_list,
    "batch": _cmd_batch,
    "chat": _cmd_chat,
    "stats": _cmd_stats,
    "load": _cmd_load,
}


#: Connection options that take a value, and the one that does not.
_VALUED = frozenset({"--target", "--token", "--policy", "--timeout"})
_FLAGS = frozenset({"--json"})


def hoist_connection_options(argv: Sequence[str]) -> list[str]:
    """Move connection options written before the command to just after it.

    ``meshdemo --target T --token X load ...`` then means what it says, as
    ``meshdemo load --target T --token X ...`` does; options after the command
    still win, since argparse keeps the last value given.
    """
    hoisted: list[str] = []
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        name = rest[0].split("=", 1)[0]
        if name in _FLAGS or (name in _VALUED and "=" in rest[0]):
            hoisted.append(rest.pop(0))
        elif name in _VALUED and len(rest) > 1:
            hoisted += [rest.pop(0), rest.pop(0)]
        else:
            break  # --help, or something for argparse to refuse
    if not hoisted or not rest:
        return list(argv)
    return [rest[0], *hoisted, *rest[1:]]


def _parse(argv: Sequence[str], io: _Io) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse exits (--help, bad usage)."""
    parser = build_parser(io.env)
    with contextlib.redirect_stdout(io.stdout), contextlib.redirect_stderr(io.stderr):
        try:
            return parser.parse_args(hoist_connection_options(argv))
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE


async def _run(args: argparse.Namespace, io: _Io) -> int:
    if args.command == "token":
        return _cmd_token(args, io)
    if args.command == "chaos":
        return await run_chaos_command(args, io.out, io.err)
    if args.command == "certs":
        return run_certs(args, io.stdout, io.stderr)
    if args.command == "batch":
        # Read and check the whole file before any connection is made.
        args.specs = _read_batch_file(args.file, io)
    tracer_provider = _tracer_provider(io)
    try:
        async with _client(args, io, tracer_provider) as client:
            return await _HANDLERS[args.command](args, client, io)
    finally:
        if tracer_provider is not None:
            await _flush_spans(tracer_provider)


#: Seconds the CLI waits at exit for its spans to reach the collector.
_SPAN_FLUSH_S = 2.0


def _tracer_provider(io: _Io) -> TracerProvider | None:
    """A provider exporting over OTLP when the environment names an endpoint, else None.

    Without one, tracing stays off: spans would go nowhere and cost CPU on every call.
    (The SDK reads its own ``OTEL_*`` settings from the process environment.)
    """
    if not export_enabled(io.env):
        return None
    return configure_tracing("meshdemo-client", export_timeout_s=_SPAN_FLUSH_S / 2)


async def _flush_spans(provider: TracerProvider) -> None:
    """Flush and shut the provider down off the loop (a collector may run on this very loop)."""
    # Shielded: on Ctrl-C the command is cancelled, and the spans of what it did still go out.
    await asyncio.shield(asyncio.to_thread(shutdown_tracing, provider, _SPAN_FLUSH_S))


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
    io = _Io(
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
        return _report_error(io, err)
    except UsageError as err:
        io.err(f"error: {err}")
        return EXIT_USAGE


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
