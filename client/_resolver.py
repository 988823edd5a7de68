"""Discovery: the Resolver protocol, the Address value, and target parsing.

A resolver turns a target URI into the current set of endpoint addresses and
publishes every change of that set. The endpoint set (``_pool``) consumes it,
and asks for an early re-resolution when an endpoint fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

__all__ = [
    "TARGET_FORMS",
    "Address",
    "Resolver",
    "StaticResolver",
    "TargetError",
    "parse_hostport",
    "resolver_for",
]

#: The target forms every resolver accepts, worded as the CLI's ``--target`` help.
TARGET_FORMS = (
    "dns:///name:port, dns://server:port/name:port, "
    "static:///host:port,host:port or k8s:///service.namespace:port"
)


class TargetError(ValueError):
    """A target URI that no resolver understands."""


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """One endpoint: an IP address (or host name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The target string grpcio dials for this one address, bypassing its resolver."""
        kind = "ipv6" if ":" in self.host else "ipv4"
        if _is_ip(self.host):
            return f"{kind}:{self}"
        return f"dns:///{self}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or (with a default port) a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError(f"unclosed '[' in {text!r}")
        if rest and not rest.startswith(":"):
            raise TargetError(f"unexpected {rest!r} after ']' in {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise TargetError(f"no host in {text!r}")
    if not port_text:
        if default_port is None:
            raise TargetError(f"no port in {text!r}")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise TargetError(f"bad port in {text!r}")
    return host, int(port_text)


@runtime_checkable
class Resolver(Protocol):
    """Publishes the set of addresses behind one target.

    Invariants: ``updates()`` yields a full set (not a diff) each time it
    changes, the first set as soon as one is known; an empty set means no
    endpoint is known right now; ``resolve_now()`` never blocks and may be
    called any number of times (the resolver coalesces and rate-limits).

    ``last_failure`` (added after the first release; the endpoint set reads it
    with a default of None, so older resolvers still work) says in words for a
    person why the last resolution gave no address: its source failed (the
    last set is kept), or it answered that there is none. It is None once a
    resolution found addresses. It never names an internal class.
    """

    @property
    def last_failure(self) -> str | None:
        """Why the last resolution gave no address (e.g. ``users: NXDOMAIN from ...``), or None."""
        ...

    def updates(self) -> AsyncIterator[frozenset[Address]]:
        """Yield the full address set whenever it changes, until ``close()``."""
        ...

    def resolve_now(self) -> None:
        """Ask for a re-resolution soon (an endpoint failed)."""

    async def close(self) -> None:
        """Stop resolving; ``updates()`` iterators end."""


class StaticResolver:
    """``static:///host:port,host:port``: a fixed list, published once."""

    def __init__(self, addresses: frozenset[Address]) -> None:
        if not addresses:
            raise TargetError("static:/// needs at least one host:port")
        self._addresses = addresses
        self._closed = asyncio.Event()

    @classmethod
    def from_target(cls, path: str) -> StaticResolver:
        """Build from the part after ``static:///``."""
        parts = [p for p in path.split(",") if p.strip()]
        return cls(frozenset(Address(*parse_hostport(p)) for p in parts))

    async def updates(self) -> AsyncIterator[frozenset[Address]]:
        # The set never changes, but the iterator ends only at close(), as the
        # protocol says: a consumer reads the end as "resolver closed".
        if self._closed.is_set():
            return
        yield self._addresses
        await self._closed.wait()

    @property
    def last_failure(self) -> str | None:
        """Always None: a fixed list never fails."""
        return None

    def resolve_now(self) -> None:
        return None

    async def close(self) -> None:
        self._closed.set()

    def __repr__(self) -> str:
        return f"StaticResolver({sorted(map(str, self._addresses))})"

    def __str__(self) -> str:
        return "static:///" + ",".join(map(str, sorted(self._addresses)))


def resolver_for(target: str) -> Resolver:
    """The resolver for ``target``: ``dns:///``, ``dns://server/``, ``static:///``, ``k8s:///``.

    A bare ``host:port`` is read as ``dns:///host:port``, as grpcio does.

    Raises:
        TargetError: A target no resolver understands; its message ends with
            the accepted forms (:data:`TARGET_FORMS`).
    """
    try:
        return _dispatch(target)
    except TargetError as exc:
        where = "" if repr(target) in str(exc) else f" (target {target!r})"
        raise TargetError(f"{exc}{where}; a target is one of {TARGET_FORMS}") from exc


def _dispatch(target: str) -> Resolver:
    if "://" not in target:
        target = "dns:///" + target
    try:
        parts = urlsplit(target)
    except ValueError as exc:  # e.g. an unclosed '[' in the authority
        raise TargetError(f"malformed target {target!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise TargetError(f"unexpected query or fragment in {target!r}")
    path = parts.path.lstrip("/")
    if parts.scheme == "static":
        return StaticResolver.from_target(path)
    if parts.scheme == "dns":
        from client._dns import DnsResolver

        return DnsResolver.from_target(parts.netloc, path)
    if parts.scheme == "k8s":
        from client._k8s import KubernetesResolver

        return KubernetesResolver.from_target(parts.netloc, path)
    raise TargetError(f"unsupported target scheme {parts.scheme!r} in {target!r}")
