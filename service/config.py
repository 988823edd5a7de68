"""The service's configuration: one frozen, validated value per process.

Every setting has a command-line flag and a ``MESH_*`` environment variable
with the same meaning; a flag wins over the variable, the variable over the
default. The Helm chart and the local mesh set the same variable names (a test
holds them together). Tracing is configured by the standard ``OTEL_*``
variables, read by the OpenTelemetry SDK itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

__all__ = [
    "HELP_HINT",
    "ConfigError",
    "ServiceConfig",
    "StartupError",
    "build_parser",
    "load_config",
]

#: How to fix a setting, when nothing more precise can be said.
HELP_HINT = "see python -m service --help"


class StartupError(Exception):
    """The replica cannot start; printed as one line, ``error: <what>; <fix>``.

    Attributes:
        what: What is wrong, naming the setting, path or address involved
            (never a password).
        fix: How to fix it.
        exit_code: 1: the environment is at fault (a port taken, a store
            that cannot be opened); 2 (:class:`ConfigError`): a setting is.
    """

    exit_code = 1

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix

    def line(self) -> str:
        """The one line printed on stderr."""
        return f"error: {self.what}; {self.fix}"


class ConfigError(StartupError, ValueError):
    """A setting is missing or invalid; the message names the flag and variable."""

    exit_code = 2

    def __init__(self, what: str, fix: str = HELP_HINT) -> None:
        super().__init__(what, fix)


def _setting(
    default: Any,
    env: str,
    help: str,
    *,
    flag: str | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "flag": flag, "check": check})


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number from 0 to 65535"


def _optional_port(value: int) -> str | None:
    return None if -1 <= value <= 65535 else "must be -1 (off) or a port number from 0 to 65535"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _at_least(minimum: float) -> Callable[[float], str | None]:
    return lambda value: None if value >= minimum else f"must be at least {minimum}"


_STORE_FORMS = "must be sqlite:///FILE or postgresql://USER@HOST:PORT/DB"


def _store_url(value: str) -> str | None:
    if value.startswith("sqlite:///"):
        return None if value[len("sqlite:///") :].split("?")[0] else _STORE_FORMS
    if not value.startswith(("postgresql://", "postgres://")):
        return _STORE_FORMS
    try:
        urlsplit(value).port  # noqa: B018  # parses the port, raising if it is not one
    except ValueError:
        return "the PostgreSQL port must be a number from 1 to 65535"
    return None


def _log_level(value: str) -> str | None:
    levels = {"DEBUG", "INFO", "WARNING", "ERROR"}
    return None if value.upper() in levels else f"must be one of {sorted(levels)}"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """All settings of one replica. Build it with :func:`load_config`."""

    host: str = _setting("127.0.0.1", "MESH_HOST", "address to bind (0.0.0.0 or [::] in a pod)")
    port: int = _setting(50051, "MESH_PORT", "gRPC port; 0 binds an ephemeral port", check=_port)
    metrics_port: int = _setting(
        9464,
        "MESH_METRICS_PORT",
        "Prometheus /metrics port on the same host; 0 ephemeral, -1 off",
        check=_optional_port,
    )
    store: str = _setting(
        "sqlite:///meshdemo.db",
        "MESH_STORE",
        "store URL: sqlite:///FILE (several local replicas may share it) or postgresql://...",
        check=_store_url,
    )
    auth_secret: str = field(
        default="",
        repr=False,
        metadata={
            "env": "MESH_AUTH_SECRET",
            "flag": None,
            "check": None,
            "help": "HS256 secret for bearer JWTs (environment only, never a flag)",
        },
    )
    auth_secret_file: str = _setting(
        "", "MESH_AUTH_SECRET_FILE", "file holding the JWT secret (a mounted Secret)"
    )
    auth_disabled: bool = _setting(
        False,
        "MESH_AUTH_DISABLED",
        "accept calls without tokens (logged as a warning)",
        flag="--no-auth",
    )
    replica_name: str = _setting(
        "", "MESH_REPLICA_NAME", "name of this replica in logs and chats (default: host name)"
    )
    drain_delay: float = _setting(
        5.0,
        "MESH_DRAIN_DELAY",
        "seconds between NOT_SERVING and stopping on SIGTERM, so endpoint removal propagates",
        check=_non_negative,
    )
    shutdown_grace: float = _setting(
        10.0,
        "MESH_SHUTDOWN_GRACE",
        "seconds in-flight RPCs get to finish when stopping",
        check=_non_negative,
    )
    max_connection_age: float = _setting(
        300.0,
        "MESH_MAX_CONNECTION_AGE",
        "seconds before a connection is asked to go away, so clients rebalance; 0 = never",
        check=_non_negative,
    )
    max_connection_age_grace: float = _setting(
        30.0,
        "MESH_MAX_CONNECTION_AGE_GRACE",
        "seconds calls on an aged connection get to finish",
        check=_non_negative,
    )
    keepalive_min_ping_interval: float = _setting(
        10.0,
        "MESH_KEEPALIVE_MIN_PING_INTERVAL",
        "shortest client keepalive ping interval accepted, in seconds",
        check=_at_least(1.0),
    )
    max_concurrent_rpcs: int = _setting(
        1000,
        "MESH_MAX_CONCURRENT_RPCS",
        "UserService calls served at once, unary and streams together; more are refused "
        "with RESOURCE_EXHAUSTED and retry pushback (health and reflection never count)",
        check=_positive,
    )
    max_chat_streams: int = _setting(
        200, "MESH_MAX_CHAT_STREAMS", "open Chat streams at once on this replica", check=_positive
    )
    max_list_streams: int = _setting(
        100,
        "MESH_MAX_LIST_STREAMS",
        "open ListUsers streams at once on this replica",
        check=_positive,
    )
    max_unary_rpcs: int = _setting(
        800,
        "MESH_MAX_UNARY_RPCS",
        "GetUser, CreateUser and BatchCreateUsers calls at once on this replica",
        check=_positive,
    )
    max_streams_per_principal: int = _setting(
        20,
        "MESH_MAX_STREAMS_PER_PRINCIPAL",
        "open Chat and ListUsers streams of one caller (token sub) on this replica",
        check=_positive,
    )
    chat_idle_timeout: float = _setting(
        300.0,
        "MESH_CHAT_IDLE_TIMEOUT",
        "seconds a Chat may go without a client message before it ends with "
        "DEADLINE_EXCEEDED; 0 = never",
        check=_non_negative,
    )
    handshake_timeout: float = _setting(
        10.0,
        "MESH_HANDSHAKE_TIMEOUT",
        "seconds a new connection gets to complete its handshake and HTTP/2 preface",
        check=_positive,
    )
    max_connection_idle: float = _setting(
        600.0,
        "MESH_MAX_CONNECTION_IDLE",
        "seconds a connection without calls stays open before GOAWAY; 0 = never",
        check=_non_negative,
    )
    default_call_timeout: float = _setting(
        30.0,
        "MESH_DEFAULT_CALL_TIMEOUT",
        "seconds a call that arrived without a deadline may take (unary calls, and the "
        "request of a ListUsers or health call) before it ends with DEADLINE_EXCEEDED",
        check=_positive,
    )
    default_stream_timeout: float = _setting(
        600.0,
        "MESH_DEFAULT_STREAM_TIMEOUT",
        "seconds a ListUsers stream without a deadline may stay open; 0 = never "
        "(Chat is bounded by --chat-idle-timeout instead)",
        check=_non_negative,
    )
    max_connections: int = _setting(
        1000,
        "MESH_MAX_CONNECTIONS",
        "open TCP connections at once on this replica; more are closed at accept, before "
        "the handshake; 0 = no cap",
        check=_non_negative,
    )
    max_streams_per_connection: int = _setting(
        256,
        "MESH_MAX_STREAMS_PER_CONNECTION",
        "concurrent HTTP/2 streams one connection may open (more wait at the client)",
        check=_positive,
    )
    tls_cert_file: str = _setting(
        "",
        "MESH_TLS_CERT_FILE",
        "PEM certificate chain to serve TLS with (with --tls-key-file); re-read when it "
        "changes; empty = plain text",
    )
    tls_key_file: str = _setting(
        "", "MESH_TLS_KEY_FILE", "PEM private key of --tls-cert-file; re-read when it changes"
    )
    tls_client_ca_file: str = _setting(
        "",
        "MESH_TLS_CLIENT_CA_FILE",
        "mutual TLS: PEM CA bundle that client certificates must chain to; every client "
        "must present one (needs --tls-cert-file)",
    )
    health_port: int = _setting(
        -1,
        "MESH_HEALTH_PORT",
        "plain-text port serving only grpc.health.v1, for kubelet probes when TLS is on "
        "(they cannot speak TLS); 0 ephemeral, -1 off",
        check=_optional_port,
    )
    health_interval: float = _setting(
        2.0,
        "MESH_HEALTH_INTERVAL",
        "seconds between store probes behind the health status",
        check=_positive,
    )
    reflection: bool = _setting(True, "MESH_REFLECTION", "serve gRPC server reflection")
    fault_delay: float = _setting(
        0.0,
        "MESH_FAULT_DELAY",
        "chaos: extra seconds added to every UserService call, to show a slow replica; 0 = off",
        check=_non_negative,
    )
    log_level: str = _setting("INFO", "MESH_LOG_LEVEL", "log level", check=_log_level)

    def __post_init__(self) -> None:
        problems = [
            f"{_flag_of(f)} / {f.metadata['env']}: {message}"
            for f in dataclasses.fields(self)
            if f.metadata.get("check") and (message := f.metadata["check"](getattr(self, f.name)))
        ]
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append(
                "--tls-cert-file / MESH_TLS_CERT_FILE and --tls-key-file / MESH_TLS_KEY_FILE "
                "must be set together"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            problems.append(
                "--tls-client-ca-file / MESH_TLS_CLIENT_CA_FILE (mutual TLS) needs "
                "--tls-cert-file and --tls-key-file"
            )
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @property
    def replica(self) -> str:
        """The replica's name: the configured one or the host name."""
        return self.replica_name or socket.gethostname()

    def jwt_secret(self) -> str:
        """The secret from MESH_AUTH_SECRET or the secret file; empty when unset."""
        if self.auth_secret:
            return self.auth_secret
        if self.auth_secret_file:
            try:
                return Path(self.auth_secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read MESH_AUTH_SECRET_FILE {self.auth_secret_file}: "
                    f"{exc.strerror or exc}",
                    "mount the secret there, or set --auth-secret-file / "
                    "MESH_AUTH_SECRET_FILE to the file that holds it",
                ) from exc
        return ""


def _flag_of(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


_KIND_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number"}


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    default: Any = f.default
    kind = type(default)
    try:
        if kind is bool:
            return _parse_bool(raw)
        return kind(raw)
    except ValueError:
        expected = _KIND_NAMES.get(kind, kind.__name__)
        raise ConfigError(f"{f.metadata['env']}={raw[:64]!r} is not {expected}") from None


class _Parser(argparse.ArgumentParser):
    """Reports bad flags as ConfigError, in the one start-up error format."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m service``; every flag names its variable."""
    parser = _Parser(
        prog="python -m service",
        description="Run one replica of the meshdemo.v1 UserService.",
        epilog="Secret: MESH_AUTH_SECRET holds the HS256 secret for bearer JWTs, at least "
        "32 bytes (e.g. export MESH_AUTH_SECRET=$(openssl rand -hex 32)); it is read from "
        "the environment only, never a flag, so it stays out of process listings. "
        "Alternatively --auth-secret-file / MESH_AUTH_SECRET_FILE names a file holding it. "
        "Tracing: the standard OTEL_* variables (OTEL_SERVICE_NAME, "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG); "
        "no endpoint means no export. Start-up errors are one line on stderr, "
        "'error: <what is wrong>; <how to fix it>', with exit status 2 for a setting "
        "and 1 for the environment (a port in use, a store that cannot be opened).",
    )
    for f in dataclasses.fields(ServiceConfig):
        if f.name == "auth_secret":
            continue
        help_text = f"{f.metadata['help']} (env {f.metadata['env']}; default {f.default!r})"
        if isinstance(f.default, bool):
            action = (
                argparse.BooleanOptionalAction if f.metadata.get("flag") is None else "store_const"
            )
            if action == "store_const":
                parser.add_argument(
                    _flag_of(f),
                    dest=f.name,
                    action="store_const",
                    const=True,
                    default=None,
                    help=help_text,
                )
            else:
                parser.add_argument(
                    _flag_of(f), dest=f.name, action=action, default=None, help=help_text
                )
            continue
        parser.add_argument(
            _flag_of(f),
            dest=f.name,
            type=type(f.default),
            default=None,
            help=help_text,
            metavar=f.name.upper(),
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Build the config from flags, then ``MESH_*`` variables, then defaults."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServiceConfig):
        if args.get(f.name) is not None:
            values[f.name] = args[f.name]
        elif f.metadata["env"] in env:
            values[f.name] = _convert(f, env[f.metadata["env"]])
    return ServiceConfig(**values)
