"""What every command shares: exit codes, the connection options, IO, the client, output.

The connection options are declared in :func:`connection_options` and nowhere else:
``hoist_connection_options`` (options written before the command) reads the same
declaration, so a new connection flag is one ``add_argument`` line there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import grpc
from opentelemetry.sdk.trace import TracerProvider

from client._client import ROLES, UserClient
from client._errors import InvalidArgumentError, MeshError
from client._picker import PICKERS
from client._resolver import TARGET_FORMS, TargetError
from client._tls import add_tls_arguments, tls_from_args
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
    "SETUP_GRACE_S",
    "Command",
    "CommandDeadline",
    "Deadline",
    "Io",
    "UsageError",
    "add_command",
    "clean_token",
    "connection_options",
    "epilog",
    "exit_code_for",
    "hoist_connection_options",
    "int_in",
    "non_negative_float",
    "one_call_budget",
    "positive_float",
    "print_user",
    "report_error",
    "run_with_client",
    "user_dict",
]

#: Target used when neither --target nor MESH_TARGET is given.
DEFAULT_TARGET = "dns:///localhost:50051"
EXIT_OK = 0
#: The call failed with a status not listed below (NOT_FOUND, INVALID_ARGUMENT, ...).
EXIT_RPC = 1
#: Bad command line or input file; nothing was sent.
EXIT_USAGE = 2
#: No replica answered in time (UNAVAILABLE, DEADLINE_EXCEEDED, or the command's
#: --timeout ran out): worth retrying later.
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
    EXIT_UNAVAILABLE: "no replica answered in time (UNAVAILABLE, DEADLINE_EXCEEDED, --timeout)",
    EXIT_AUTH: "bad or missing token, or a missing role (UNAUTHENTICATED, PERMISSION_DENIED)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_CLOSED_PIPE: "stdout was closed by its reader (e.g. `| head`); output stopped there",
}
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_AUTH = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_ROLE_NAMES = {value: name for name, value in ROLES.items()}


def exit_code_for(code: grpc.StatusCode) -> int:
    """The process exit code for a call that failed with ``code``."""
    if code in _TRANSIENT:
        return EXIT_UNAVAILABLE
    if code in _AUTH:
        return EXIT_AUTH
    return EXIT_RPC


#: Seconds the whole command may take beyond its calls' deadlines: opening and closing
#: the client. A call's own error (more telling) then comes before the command's.
SETUP_GRACE_S = 0.5


def one_call_budget(args: argparse.Namespace) -> float:
    """The budget of a command that makes one call: --timeout, plus the set-up grace."""
    timeout: float = args.timeout
    return timeout + SETUP_GRACE_S


class UsageError(Exception):
    """Bad input found before anything was sent (exit code 2)."""


class CommandDeadline(Exception):
    """The whole command ran past its deadline (exit code 3)."""


class Deadline:
    """The deadline of the whole command, on top of each call's own.

    A command that makes progress in steps (``list --all`` page by page, ``chat``
    waiting for echoes) moves it with :meth:`renew` or suspends it with
    :meth:`pause`; the others leave it where :meth:`bound` set it.
    """

    def __init__(self, seconds: float | None, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self._scope: asyncio.Timeout | None = None

    @asynccontextmanager
    async def bound(self) -> AsyncIterator[Deadline]:
        """Run the body within the deadline; raises :class:`CommandDeadline` when it passes."""
        try:
            async with asyncio.timeout(self.seconds) as scope:
                self._scope = scope
                yield self
        except TimeoutError as exc:
            if scope.expired():
                raise CommandDeadline(self.message()) from exc
            raise
        if scope.expired():  # the body caught the cancellation (``load`` prints its summary)
            raise CommandDeadline(self.message())

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self._scope is not None and self._scope.expired()

    def renew(self, seconds: float | None = None) -> None:
        """Move the deadline to ``seconds`` (default: the command's own) from now."""
        if self._scope is not None:
            span = self.seconds if seconds is None else seconds
            when = None if span is None else asyncio.get_running_loop().time() + span
            self._scope.reschedule(when)

    def pause(self) -> None:
        """No deadline until the next :meth:`renew` (nothing is owed by the server)."""
        if self._scope is not None:
            self._scope.reschedule(None)

    def message(self) -> str:
        """The one line printed when the deadline passes (after ``error: ``)."""
        bound = "its" if self.seconds is None else f"its {self.seconds:g} s"
        return (
            f"DEADLINE_EXCEEDED: {self.what} ran past {bound} bound "
            f"(set by --timeout; see `meshdemo {self.what} --help`)"
        )


@dataclass
class Io:
    """The process's streams and environment (injectable for tests)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]
    deadline: Deadline = field(default_factory=lambda: Deadline(None, "the command"))

    def out(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def err(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)


class Command(Protocol):
    """What a command module provides (``client/cli/get.py`` and its siblings)."""

    NAME: str

    def add_parser(self, commands: Any, parent: argparse.ArgumentParser) -> None: ...
    async def run(self, args: argparse.Namespace, io: Io) -> int: ...
    def budget(self, args: argparse.Namespace) -> float | None: ...


# --- option types ------------------------------------------------------------------------------


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value

    parse.__name__ = "integer"
    return parse


# --- the parser --------------------------------------------------------------------------------


def epilog() -> str:
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


def connection_options(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add the options of every command that talks to the service: the one place to add one.

    They may be written before the command too (see :func:`hoist_connection_options`).
    """
    group = parser.add_argument_group("connection")
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
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each call, and of the whole command (discovery included), in "
        "seconds; see each command for what its whole run may take (default: %(default)s)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: one JSON object per user or line (default: off)",
    )
    group.add_argument(
        "--no-hedging",
        action="store_true",
        help="send no hedge: by default GetUser and the first response of ListUsers get a "
        "second copy on another replica when the first is slower than that method's recent "
        "p99 (within the retry budget; see docs/hedging.md)",
    )
    add_tls_arguments(parser, env)


def connection_parent(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """A parent parser holding :func:`connection_options`, for ``parents=[...]``."""
    parent = argparse.ArgumentParser(add_help=False)
    connection_options(parent, env)
    return parent


def add_command(
    commands: Any,
    name: str,
    parent: argparse.ArgumentParser | None,
    summary: str,
    *,
    epilog_extra: str = "",
) -> argparse.ArgumentParser:
    """One subcommand with the shared description, epilog and (unless None) connection options."""
    text = f"{epilog_extra}\n\n{epilog()}" if epilog_extra else epilog()
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[] if parent is None else [parent],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _connection_option_arity() -> tuple[frozenset[str], frozenset[str]]:
    """(options that take a value, options that do not), read from the declaration."""
    probe = connection_parent({})
    valued: set[str] = set()
    flags: set[str] = set()
    for action in probe._actions:
        (flags if action.nargs == 0 else valued).update(action.option_strings)
    return frozenset(valued), frozenset(flags)


_VALUED, _FLAGS = _connection_option_arity()


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


# --- the client --------------------------------------------------------------------------------

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
    args: argparse.Namespace, io: Io, tracer_provider: TracerProvider | None = None
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
            hedging=False if args.no_hedging else None,
        )
    except TargetError as exc:
        raise UsageError(f"bad --target: {exc}") from exc
    except ValueError as exc:  # TLS files
        raise UsageError(f"TLS: {exc}") from exc


#: Seconds the CLI waits at exit for its spans to reach the collector.
_SPAN_FLUSH_S = 2.0


def _tracer_provider(io: Io) -> TracerProvider | None:
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


async def run_with_client(
    args: argparse.Namespace,
    io: Io,
    handler: Callable[[argparse.Namespace, UserClient, Io], Any],
) -> int:
    """Open the client (and tracing), run ``handler`` within the command's deadline, close.

    The spans are flushed after the deadline, with their own bound.
    """
    tracer_provider = _tracer_provider(io)
    try:
        async with io.deadline.bound(), _client(args, io, tracer_provider) as client:
            code: int = await handler(args, client, io)
            return code
    finally:
        if tracer_provider is not None:
            await _flush_spans(tracer_provider)


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


def print_user(io: Io, user: user_pb2.User, as_json: bool) -> None:
    data = user_dict(user)
    if as_json:
        io.out(json.dumps(data))
        return
    roles = ",".join(data["roles"])
    io.out(
        f"{data['id']}  {data['name']} <{data['email']}>  age {data['age']}  "
        f"roles {roles}  created {data['created_at']}"
    )


def report_error(io: Io, err: MeshError) -> int:
    io.err(f"error: {err.code.name}: {err.message}")
    if isinstance(err, InvalidArgumentError):
        for violation in err.field_violations:
            io.err(f"  {violation.field}: {violation.description}")
    return exit_code_for(err.code)
