"""``dns:///name:port`` and ``dns://server:port/name:port``: A and AAAA records.

Every A and AAAA record of the name is one endpoint on the target's port.
The name is re-resolved when the answer's TTL runs out (clamped to
``[min_ttl, max_ttl]``) and soon after ``resolve_now()``, never more often
than once per ``min_interval``. A name that does not exist, or has no
address records, resolves to the empty set; a DNS failure (timeout, SERVFAIL,
refused) keeps the last known set and is retried with backoff.

A and AAAA are asked one after the other, each on its own: a server that
wrongly answers NXDOMAIN for one family (some do, for AAAA) does not hide
the other family's records; the name is taken as non-existent only when both
say NXDOMAIN. A failure of either query (timeout, SERVFAIL) fails the whole
resolution, so a dual-stack name never loses one family to a passing error.

``last_failure`` says why the last resolution gave no address, in words and
naming the server: ``users: NXDOMAIN from 10.96.0.10:53``, ``users: no A or
AAAA records at ...``, ``users: timed out asking ...``, ``users: refused by
...``, ``users: SERVFAIL from ...``; the endpoint set puts it in the
UNAVAILABLE a caller sees when no endpoint is known.

Without an authority, ``localhost``, ``*.localhost`` and the names in the
hosts file resolve on the machine without any DNS query (RFC 6761; see
``client._hosts``), and are not re-resolved; other names go to the system
configuration (``/etc/resolv.conf``), search domains and ``ndots`` included,
as the C library would. With an authority only that server is asked, for
every name, and the name is taken as absolute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.resolver

from client._discovery_backoff import DiscoveryBackoff
from client._feed import FeedResolver
from client._hosts import DEFAULT_HOSTS_FILE, local_addresses
from client._resolver import Address, TargetError, _is_ip, parse_hostport
from client._tasks import cancel_and_wait, raise_if_cancelled

__all__ = ["DEFAULT_DNS_SERVER_PORT", "DEFAULT_TARGET_PORT", "DnsResolver"]

_log = logging.getLogger(__name__)

DEFAULT_DNS_SERVER_PORT = 53
# The port of the name when the target gives none. gRPC would use 443; this
# project's service listens on 50051 (ServiceConfig's default), so a bare
# ``dns:///meshdemo`` reaches it.
DEFAULT_TARGET_PORT = 50051


@dataclass(frozen=True, slots=True)
class _Answer:
    addresses: frozenset[Address]
    ttl: float
    #: Why ``addresses`` is empty (NXDOMAIN, no records), in words; None when it is not.
    why_empty: str | None


@dataclass(frozen=True, slots=True)
class _Family:
    """One record type's answer: its addresses, how long it holds, the name it was found under."""

    addresses: tuple[str, ...]
    ttl: float
    #: The absolute name that answered (after search domains); None for NXDOMAIN.
    qname: dns.name.Name | None


class DnsResolver(FeedResolver):
    """Publishes the A and AAAA records of one name as endpoints.

    Args:
        host: The name to resolve, or an IP literal (published as is, no query).
        port: The port of every endpoint.
        server: ``(ip, port)`` of the only DNS server to ask; None for the
            system configuration with its search domains.
        min_ttl: Shortest wait in seconds before re-resolving a fresh answer.
        max_ttl: Longest wait in seconds before re-resolving, whatever the TTL.
        min_interval: At most one resolution per this many seconds, whatever
            ``resolve_now()`` asks.
        query_timeout: Seconds one resolution (A and AAAA, all retries) may take.
        backoff: Delays after consecutive failed resolutions.
        clock: Monotonic seconds; injected for tests.
        sleep: Waits the given seconds; injected for tests.
        random: Floats in ``[0, 1)`` for backoff jitter; injected for tests.
        dns_resolver: A configured ``dns.asyncresolver.Resolver`` to use instead
            of one built from ``server`` or the system configuration.
        hosts_file: The hosts file consulted (with ``localhost``) before DNS
            when ``server`` is None; a missing file has no entries.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server: tuple[str, int] | None = None,
        min_ttl: float = 1.0,
        max_ttl: float = 30.0,
        min_interval: float = 1.0,
        query_timeout: float = 5.0,
        backoff: DiscoveryBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        hosts_file: str | os.PathLike[str] = DEFAULT_HOSTS_FILE,
    ) -> None:
        super().__init__()
        if not 0 < min_ttl <= max_ttl:
            raise ValueError(f"need 0 < min_ttl <= max_ttl, got {min_ttl}, {max_ttl}")
        if min_interval < 0 or query_timeout <= 0:
            raise ValueError("min_interval must be >= 0 and query_timeout > 0")
        if server is not None and not _is_ip(server[0]):
            raise TargetError(f"the DNS server must be an IP address, got {server[0]!r}")
        self._host = host
        self._port = port
        self._server = server
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._min_interval = min_interval
        self._query_timeout = query_timeout
        self._backoff = backoff or DiscoveryBackoff()
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._dns = dns_resolver
        self._hosts_file = hosts_file
        self._wake = asyncio.Event()
        self._last_query: float | None = None

    @classmethod
    def from_target(cls, netloc: str, path: str, **options: Any) -> DnsResolver:
        """Build from the authority and path of a ``dns:`` target.

        Args:
            netloc: ``""`` for the system resolver, else ``ip[:port]`` (port 53
                by default) of the DNS server to ask.
            path: ``name[:port]`` (port ``DEFAULT_TARGET_PORT`` by default).
            **options: Keyword arguments for the constructor.

        Raises:
            TargetError: A malformed name, port or server.
        """
        host, port = parse_hostport(path, DEFAULT_TARGET_PORT)
        server = parse_hostport(netloc, DEFAULT_DNS_SERVER_PORT) if netloc else None
        return cls(host, port, server=server, **options)

    def resolve_now(self) -> None:
        """Ask for a resolution soon; calls are coalesced and rate-limited."""
        self._wake.set()

    def __repr__(self) -> str:
        server = str(Address(*self._server)) if self._server else ""
        return f"DnsResolver(dns://{server}/{Address(self._host, self._port)})"

    def __str__(self) -> str:
        server = str(Address(*self._server)) if self._server else ""
        return f"dns://{server}/{Address(self._host, self._port)}"

    async def _run(self) -> None:
        if _is_ip(self._host):
            # An IP literal is its own answer: no query, nothing ever changes.
            self._publish(frozenset({Address(self._host, self._port)}))
            return
        local = self._local_addresses()
        if local is not None:
            # Known on the machine (localhost, hosts file): no query, ever.
            _log.debug("%r: resolved locally to %s", self, ", ".join(local))
            self._publish(frozenset(Address(ip, self._port) for ip in local))
            return
        failures = 0
        while True:
            await self._respect_min_interval()
            self._wake.clear()  # every request made so far is served by this query
            self._last_query = self._clock()
            try:
                answer = await self._resolve()
            except (dns.exception.DNSException, OSError) as exc:
                failures += 1
                await self._back_off(failures, self._describe_failure(exc))
                continue
            failures = 0
            self._publish(answer.addresses, why_empty=answer.why_empty)
            await self._wait_for_refresh(answer.ttl)

    async def _back_off(self, failures: int, reason: str) -> None:
        self._record_failure(reason)
        delay = self._backoff.delay(failures, self._random)
        _log.warning(
            "%r: resolution failed (%d in a row), keeping %d endpoint(s), retry in %.1fs: %s",
            self,
            failures,
            len(self.current or ()),
            delay,
            reason,
        )
        # A failing server is not asked sooner because of resolve_now().
        await self._sleep(delay)

    def _local_addresses(self) -> tuple[str, ...] | None:
        """The name's addresses known without DNS; None when DNS must be asked.

        Only without a DNS server in the target: a server given explicitly is
        asked for every name, localhost included.
        """
        if self._server is not None:
            return None
        return local_addresses(self._host, self._hosts_file)

    async def _respect_min_interval(self) -> None:
        if self._last_query is None:
            return
        gap = self._last_query + self._min_interval - self._clock()
        if gap > 0:
            await self._sleep(gap)

    async def _wait_for_refresh(self, ttl: float) -> None:
        """Return when the clamped TTL has run out or ``resolve_now()`` was called."""
        delay = min(max(ttl, self._min_ttl), self._max_ttl)
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sleeper, waker)

    async def _resolve(self) -> _Answer:
        """Ask for A, then AAAA of the name A was found under.

        Each family is asked on its own (not with dnspython's ``resolve_name``),
        so that one family answered NXDOMAIN, as some resolvers wrongly answer
        AAAA, does not hide the other family's records: the name is taken as
        non-existent only when both families say NXDOMAIN.
        """
        resolver = self._resolver()
        expires = time.monotonic() + self._query_timeout  # real time: real queries
        search = self._server is None  # search domains apply only to the system configuration
        v4 = await self._ask(resolver, self._host, "A", search, expires)
        # AAAA is asked under the name A was found under: both families then come
        # from one search candidate, as dnspython's resolve_name does it.
        if v4.qname is not None:
            v6 = await self._ask(resolver, v4.qname, "AAAA", False, expires)
        else:
            v6 = await self._ask(resolver, self._host, "AAAA", search, expires)
        addresses = frozenset(Address(ip, self._port) for ip in v4.addresses + v6.addresses)
        return _Answer(addresses, min(v4.ttl, v6.ttl), self._why_empty(addresses, v4, v6))

    async def _ask(
        self,
        resolver: dns.asyncresolver.Resolver,
        name: str | dns.name.Name,
        rdtype: str,
        search: bool,
        expires: float,
    ) -> _Family:
        try:
            answer = await resolver.resolve(
                name,
                rdtype,
                search=search,
                raise_on_no_answer=False,
                lifetime=max(expires - time.monotonic(), 0.0),
            )
        except dns.resolver.NXDOMAIN as exc:
            raise_if_cancelled()
            _log.debug("%r: %s answered NXDOMAIN", self, rdtype)
            return _Family((), _negative_ttl(exc, self._max_ttl), None)
        # dnspython waits through asyncio.wait_for, which in Python 3.11 can drop a cancel
        # that came as the answer did: without this, close() would wait for the next TTL.
        raise_if_cancelled()
        found = tuple(str(rdata.address) for rdata in answer.rrset or ())
        return _Family(found, float(answer.chaining_result.minimum_ttl), answer.qname)

    def _why_empty(self, addresses: frozenset[Address], v4: _Family, v6: _Family) -> str | None:
        if addresses:
            return None
        if v4.qname is None and v6.qname is None:
            _log.info("%r: no such name (NXDOMAIN)", self)
            return f"{self._host}: NXDOMAIN from {self._servers_text()}"
        _log.info("%r: the name has no A or AAAA records", self)
        return f"{self._host}: no A or AAAA records at {self._servers_text()}"

    def _servers_text(self) -> str:
        """The DNS server(s) asked, as ``ip:port`` joined by commas."""
        if self._server is not None:
            return str(Address(*self._server))
        resolver = self._dns
        if resolver is None:
            return "the system's DNS servers"
        return ", ".join(_nameserver_text(str(ns), resolver.port) for ns in resolver.nameservers)

    def _describe_failure(self, exc: BaseException) -> str:
        """A failed resolution in words for a person, naming the server; no class names."""
        host = self._host
        if isinstance(exc, dns.resolver.NoResolverConfiguration):
            return f"{host}: no DNS server configured (no usable resolv.conf)"
        if isinstance(exc, dns.exception.Timeout):
            return f"{host}: timed out asking {self._servers_text()}"
        if isinstance(exc, dns.resolver.NoNameservers):
            errors = exc.kwargs.get("errors") or []
            said = dict.fromkeys(_server_error(error) for error in errors)
            return f"{host}: " + ("; ".join(said) or f"no answer from {self._servers_text()}")
        if isinstance(exc, OSError):
            return f"{host}: asking {self._servers_text()} failed: {exc.strerror or exc}"
        return f"{host}: {str(exc) or 'resolution failed'}"

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            self._dns = _make_resolver(self._server)
        return self._dns


def _make_resolver(server: tuple[str, int] | None) -> dns.asyncresolver.Resolver:
    """A dnspython resolver for ``server``, or from the system configuration.

    Raises:
        dns.resolver.NoResolverConfiguration: No server and no usable resolv.conf.
    """
    if server is None:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    return resolver


def _server_error(entry: tuple[Any, ...]) -> str:
    """One entry of dnspython's per-server errors, e.g. ``refused by 127.0.0.1:53``.

    An entry is ``(nameserver, tcp, port, error, response)``; ``error`` is an
    rcode name (``"SERVFAIL"``) or an exception.
    """
    nameserver, _tcp, port, error = entry[:4]
    server = _nameserver_text(str(nameserver), int(port))
    if error == "REFUSED":
        return f"refused by {server}"
    if isinstance(error, str):
        return f"{error} from {server}"
    if isinstance(error, dns.exception.Timeout):
        return f"timed out asking {server}"
    if isinstance(error, OSError):
        return f"asking {server} failed: {error.strerror or error}"
    return f"{error} from {server}"


def _nameserver_text(nameserver: str, port: int) -> str:
    """``ip:port`` of a dnspython nameserver's text (``Do53:127.0.0.1@5353`` or an IP).

    Anything else (a DNS-over-HTTPS URL) is returned as it is.
    """
    ip = nameserver.removeprefix("Do53:").rpartition("@")[0] or nameserver
    return str(Address(ip, port)) if _is_ip(ip) else nameserver


def _negative_ttl(exc: dns.resolver.NXDOMAIN, default: float) -> float:
    """How long an NXDOMAIN may be cached: the SOA minimum (RFC 2308), else ``default``."""
    ttls: list[float] = []
    responses: dict[object, object] = exc.kwargs.get("responses") or {}
    for response in responses.values():
        if isinstance(response, dns.message.QueryMessage):
            with contextlib.suppress(dns.exception.DNSException):
                ttls.append(response.resolve_chaining().minimum_ttl)
    return min(ttls, default=default)
