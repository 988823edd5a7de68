"""TLS for the client: channel credentials from files, re-read when they change.

What is verified: the server's certificate must chain to the CA in
``ca_file`` (the system roots when empty) and name the host the client
dialled. A ``dns:///`` or ``k8s:///`` target resolves to pod IPs, so every
channel of it verifies the *target's host name* (``users.ns.svc...``),
set as ``grpc.ssl_target_name_override``; a ``static:///`` target verifies
each address itself, so IP addresses need IP names in the certificate.
``server_name`` (``--tls-server-name``) replaces the name for every target.

Rotation: grpcio cannot change the credentials of an open channel (it would
reconnect with the old ones for its whole life). The files are looked at
(inode, size, modification time, at most once per ``check_interval``)
whenever a channel is opened and at every sweep of the endpoint pools, and
re-read when they changed; :meth:`TlsCredentials.generation` then grows, and
each endpoint replaces its channels at its next sweep (every 5 s by
default): idle ones at once, busy ones once their calls end, the health
watch moved to the new first channel before the old one closes. So a
renewed client certificate, or a new CA bundle, is in use within seconds
without a restart. To change the CA, still give clients a bundle of old and
new CA first, then switch the servers, then drop the old CA.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import grpc

from meshdemo.watched import WatchedFiles

__all__ = [
    "ChannelSecurity",
    "TlsConfig",
    "TlsCredentials",
    "add_tls_arguments",
    "channel_security",
    "server_name_for",
    "tls_from_args",
    "tls_from_env",
]

log = logging.getLogger("meshdemo.client.tls")

#: The environment variables of :class:`TlsConfig`, by field.
TLS_ENV = {
    "ca_file": "MESH_TLS_CA_FILE",
    "cert_file": "MESH_TLS_CLIENT_CERT_FILE",
    "key_file": "MESH_TLS_CLIENT_KEY_FILE",
    "server_name": "MESH_TLS_SERVER_NAME",
}


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Client TLS settings: TLS is on when a :class:`TlsConfig` is given at all.

    Attributes:
        ca_file: PEM CA bundle the server's certificate must chain to; empty
            for the system's roots.
        cert_file: PEM client certificate chain for mutual TLS (with ``key_file``).
        key_file: PEM private key of ``cert_file``.
        server_name: The name the server's certificate must carry, instead of
            the dialled host; empty to verify the dialled host.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError(
                "--tls-cert / MESH_TLS_CLIENT_CERT_FILE and --tls-key / MESH_TLS_CLIENT_KEY_FILE "
                "must be set together"
            )


@runtime_checkable
class ChannelSecurity(Protocol):
    """What the endpoint pool asks for each new channel."""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The credentials of a channel opened now."""
        ...

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel arguments the credentials need (the name to verify)."""
        ...

    def generation(self) -> int:
        """A number that grows whenever the credentials change; channels of an older one are
        replaced. May look at the files (rate-limited); never blocks for long."""
        ...


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the {what} {path} is not PEM")
    return data


class TlsCredentials:
    """Channel credentials from a :class:`TlsConfig`'s files; implements :class:`ChannelSecurity`.

    Args:
        config: The files and the server-name override.
        server_name: The name to verify when ``config.server_name`` is empty;
            None verifies each dialled address itself.
        check_interval: Seconds between looks at the files.
        clock: Monotonic seconds; a seam for tests.

    Raises:
        ValueError: A file cannot be read or is not PEM (at construction; a
            later unreadable replacement keeps the previous credentials and
            logs a warning).
    """

    def __init__(
        self,
        config: TlsConfig,
        *,
        server_name: str | None = None,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.server_name = config.server_name or server_name or None
        self._files = WatchedFiles(
            (config.ca_file, config.cert_file, config.key_file),
            self._load,
            errors=(ValueError,),
            what="TLS files",
            log=log,
            check_interval=check_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"TlsCredentials(ca={self.config.ca_file!r}, cert={self.config.cert_file!r}, "
            f"server_name={self.server_name!r}, reloads={self.reloads})"
        )

    @property
    def reloads(self) -> int:
        """How many times changed files were taken up."""
        return self._files.reloads

    def _load(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.config.ca_file, "CA file (MESH_TLS_CA_FILE)"),
            private_key=_read(self.config.key_file, "client key (MESH_TLS_CLIENT_KEY_FILE)"),
            certificate_chain=_read(
                self.config.cert_file, "client certificate (MESH_TLS_CLIENT_CERT_FILE)"
            ),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The credentials for a channel opened now, re-read first if the files changed."""
        self._files.refresh()
        return self._files.value

    def generation(self) -> int:
        """How many times changed files were taken up (:attr:`reloads`), looking first."""
        self._files.refresh()
        return self._files.reloads

    def channel_options(self) -> list[tuple[str, Any]]:
        """``grpc.ssl_target_name_override`` when a name is to be verified instead of the host."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def server_name_for(target: str) -> str | None:
    """The name a target's certificate must carry: the host of a ``dns:``/``k8s:`` target.

    None for ``static:///`` targets (each address is verified as dialled).
    A ``k8s:///service.namespace:port`` target gives ``service.namespace``.
    """
    if "://" not in target:
        target = "dns:///" + target
    parts = urlsplit(target)
    if parts.scheme not in ("dns", "k8s"):
        return None
    path = parts.path.lstrip("/")
    host = path[1:].partition("]")[0] if path.startswith("[") else path.rpartition(":")[0] or path
    return host or None


def channel_security(
    target: str,
    *,
    tls: TlsConfig | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> ChannelSecurity | grpc.ChannelCredentials | None:
    """What the endpoint pool dials ``target`` with: TLS files, given credentials, or plain text.

    Raises:
        ValueError: Both ``tls`` and ``credentials`` given, or a file cannot be read.
    """
    if tls is not None and credentials is not None:
        raise ValueError("give tls or credentials, not both")
    if tls is None:
        return credentials
    return TlsCredentials(tls, server_name=server_name_for(target))


def tls_from_env(env: Mapping[str, str]) -> TlsConfig | None:
    """The TLS settings of the ``MESH_TLS_*`` client variables; None when none is set."""
    values = {name: env.get(variable, "").strip() for name, variable in TLS_ENV.items()}
    return TlsConfig(**values) if any(values.values()) else None


def add_tls_arguments(parser: argparse.ArgumentParser | Any, env: Mapping[str, str]) -> None:
    """Add ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--tls-server-name`` to a parser.

    Defaults come from ``MESH_TLS_CA_FILE``, ``MESH_TLS_CLIENT_CERT_FILE``,
    ``MESH_TLS_CLIENT_KEY_FILE`` and ``MESH_TLS_SERVER_NAME`` in ``env``.
    """
    group = parser.add_argument_group("TLS (on when any of these is set)")
    flags = {
        "ca_file": ("--tls-ca", "PEM CA bundle the server's certificate must chain to"),
        "cert_file": ("--tls-cert", "PEM client certificate for mutual TLS (with --tls-key)"),
        "key_file": ("--tls-key", "PEM private key of --tls-cert"),
        "server_name": (
            "--tls-server-name",
            "name the server certificate must carry (default: the target's host name for "
            "dns:/// and k8s:///, each address for static:///)",
        ),
    }
    for name, (flag, text) in flags.items():
        variable = TLS_ENV[name]
        group.add_argument(
            flag,
            dest=f"tls_{name}",
            default=env.get(variable) or None,
            metavar="NAME" if name == "server_name" else "FILE",
            help=f"{text} (default: ${variable})",
        )


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS settings parsed by :func:`add_tls_arguments`; None when none is set.

    Raises:
        ValueError: A client certificate without its key, or the other way round.
    """
    values = {name: getattr(args, f"tls_{name}", None) or "" for name in TLS_ENV}
    return TlsConfig(**values) if any(values.values()) else None
