"""An embedded DNS server that answers like a Kubernetes headless Service.

Public as ``client.testing.DnsServer`` (it needs the ``testing`` extra, for
dnslib). One server serves the local mesh, the tests and the benchmarks: dnslib on
127.0.0.1, UDP (and TCP on the same port when asked), port 0 by default.
Records change while it serves; every query is answered from one consistent
snapshot:

1. A known name answers A with one record per IPv4 address and AAAA with one
   per IPv6 address, each with the short ``ttl`` (1 s by default), as CoreDNS
   answers a headless Service with one record per ready pod.
2. A known name with no record of the asked type (AAAA for an IPv4-only name,
   A for a name with no ready replica, MX, TXT, ...) answers an empty NOERROR
   ("NODATA") carrying the zone's SOA, whose TTL and minimum are
   ``negative_ttl`` (RFC 2308: how long the negative answer may be cached).
3. An unknown name answers NXDOMAIN with the same SOA.
4. With ``servfail`` set every query answers SERVFAIL (a test knob).
5. ``rcodes`` maps a query type (``"AAAA"``, or ``"*"`` for every type) to
   an rcode name answered instead of the records (a test knob): e.g.
   ``{"AAAA": "NXDOMAIN"}`` plays the resolvers that wrongly deny a name per
   family, ``{"*": "REFUSED"}`` a server that refuses to answer.

Names are case-insensitive and taken with or without the trailing dot. Only
loopback addresses can be published, so a client of this server never dials
off the machine.

Example::

    with DnsServer() as dns:
        dns.publish("users.test", ["127.0.0.2", "127.0.0.3"])
        target = dns.target("users.test", 50051)  # dns://127.0.0.1:PORT/users.test:50051
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import DNSHandler, DNSServer

__all__ = ["DEFAULT_ZONE", "DnsServer"]

#: The zone whose SOA negative answers carry, as in a cluster's CoreDNS.
DEFAULT_ZONE = "cluster.local"

# How often the serving threads look at the stop flag: stop() waits at most this.
_POLL_INTERVAL = 0.05
# A TCP client that connects and sends nothing may hold the TCP thread this long.
_TCP_READ_TIMEOUT = 2.0
# Tries at finding an ephemeral port free for both UDP and TCP.
_BIND_TRIES = 20


def _fqdn(name: str) -> str:
    """``name`` in the one form records and the query log use: lower case, trailing dot."""
    name = name.strip().lower()
    if not name or name == ".":
        raise ValueError("a DNS name must not be empty")
    return name if name.endswith(".") else name + "."


def _loopback(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"not an IP address: {address!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"only loopback addresses may be published, not {address}")
    return ip


@dataclass(frozen=True, slots=True)
class _Records:
    """The address records of one name, in publication order, no duplicates."""

    a: tuple[str, ...]
    aaaa: tuple[str, ...]

    @classmethod
    def of(cls, addresses: Iterable[str]) -> _Records:
        ips = list(dict.fromkeys(_loopback(a) for a in addresses))
        return cls(
            a=tuple(str(ip) for ip in ips if ip.version == 4),
            aaaa=tuple(str(ip) for ip in ips if ip.version == 6),
        )


class _QuietLogger:
    """dnslib's logger interface, logging nothing (a line per query would swamp output)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _UdpServer(socketserver.UDPServer):
    # Queries are answered in the serving thread: resolve() never blocks, and
    # no per-query thread can outlive close(). No SO_REUSEADDR: on Linux it
    # would let a second UDP socket bind the same port.
    allow_reuse_address = False


class _TcpServer(socketserver.TCPServer):
    # SO_REUSEADDR so that a restart binds the same port despite TIME_WAIT.
    allow_reuse_address = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, peer = super().get_request()
        conn.settimeout(_TCP_READ_TIMEOUT)
        return conn, peer


class DnsServer:
    """A DNS server on loopback answering from records changed while it runs.

    Use it as a context manager, or ``start()`` and ``stop()`` (which may be
    repeated: a restart binds the same port again). ``ttl``, ``negative_ttl``
    ``servfail`` and ``rcodes`` may be changed at any time; the next query sees them.

    Args:
        host: The loopback address to bind.
        port: The UDP (and TCP) port; 0 takes an ephemeral one, kept across restarts.
        ttl: TTL in seconds of every address record.
        negative_ttl: TTL and minimum of the SOA in negative answers (RFC 2308).
        zone: The zone whose SOA negative answers carry; names outside it get
            the root's SOA, so that the SOA always owns the asked name.
        tcp: Also answer over TCP on the same port.

    Raises:
        ValueError: A host that is not loopback, or a negative TTL.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 1,
        negative_ttl: int = 1,
        zone: str = DEFAULT_ZONE,
        tcp: bool = False,
    ) -> None:
        _loopback(host)
        if ttl < 0 or negative_ttl < 0:
            raise ValueError(f"TTLs must be 0 or more, got {ttl}, {negative_ttl}")
        if not 0 <= port <= 65535:
            raise ValueError(f"not a port number: {port}")
        self.host = host
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.servfail = False
        #: Query type (or ``"*"``) -> rcode name answered instead of records.
        self.rcodes: dict[str, str] = {}
        self.zone = _fqdn(zone)
        self.tcp = tcp
        self._port = port
        self._lock = threading.Lock()  # guards _records and _queries
        self._records: dict[str, _Records] = {}
        self._queries: list[tuple[str, str]] = []
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # -- records -------------------------------------------------------------

    def publish(self, name: str, addresses: Iterable[str]) -> None:
        """Make ``name`` answer with exactly these addresses (IPv4 as A, IPv6 as AAAA).

        An empty list keeps the name known (NODATA answers, not NXDOMAIN), as a
        headless Service with no ready pod.

        Raises:
            ValueError: An empty name, or an address that is not a loopback IP.
        """
        records = _Records.of(addresses)
        key = _fqdn(name)
        with self._lock:
            self._records[key] = records

    def remove(self, name: str) -> None:
        """Forget ``name``: it answers NXDOMAIN from now on (no error if unknown)."""
        key = _fqdn(name)
        with self._lock:
            self._records.pop(key, None)

    def addresses(self, name: str) -> tuple[str, ...]:
        """The published addresses of ``name``, IPv4 first; empty if unknown."""
        key = _fqdn(name)
        with self._lock:
            records = self._records.get(key)
        return () if records is None else records.a + records.aaaa

    def names(self) -> tuple[str, ...]:
        """Every known name (lower case, trailing dot), sorted."""
        with self._lock:
            return tuple(sorted(self._records))

    # -- query log -------------------------------------------------------------

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query answered so far as ``(name, qtype)``, oldest first (a copy)."""
        with self._lock:
            return list(self._queries)

    def count(self, qtype: str | None = None, name: str | None = None) -> int:
        """How many queries of ``qtype`` (e.g. ``"A"``) for ``name`` arrived; None is any."""
        key = None if name is None else _fqdn(name)
        with self._lock:
            return sum(1 for n, t in self._queries if qtype in (None, t) and key in (None, n))

    def query_counts(self) -> Counter[tuple[str, str]]:
        """Queries so far, counted by ``(name, qtype)``."""
        with self._lock:
            return Counter(self._queries)

    def clear_queries(self) -> None:
        """Forget the query log."""
        with self._lock:
            self._queries.clear()

    # -- serving ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the requested one before the first ``start()``)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` of the server, as a ``dns://`` authority."""
        return f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server is answering."""
        return bool(self._servers)

    def target(self, name: str, port: int) -> str:
        """The client target asking this server for ``name``: ``dns://HOST:PORT/name:port``."""
        return f"dns://{self.address}/{_fqdn(name).rstrip('.')}:{port}"

    def start(self) -> None:
        """Bind and answer in background threads; again after ``stop()``, on the same port.

        Raises:
            RuntimeError: Already running.
            OSError: The port cannot be bound.
        """
        if self._servers:
            raise RuntimeError("the DNS server is already running")
        servers = self._bind()
        self._port = _bound_port(servers[0])
        for server in servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"mesh-dns-{self._port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._servers = servers

    def stop(self) -> None:
        """Stop answering and release the port; queries are then refused. Idempotent."""
        servers, threads = self._servers, self._threads
        self._servers, self._threads = [], []
        for server in servers:
            server.shutdown()
        for server in servers:
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"DnsServer({self.address}, {len(self._records)} name(s), {state})"

    def _bind(self) -> list[socketserver.BaseServer]:
        """The UDP server, and the TCP one on the same port if asked for."""
        for _ in range(_BIND_TRIES):
            udp = self._make(_UdpServer, self._port)
            if not self.tcp:
                return [udp]
            try:
                return [udp, self._make(_TcpServer, _bound_port(udp))]
            except OSError:
                udp.server_close()
                if self._port:  # a fixed port that TCP cannot have: no point retrying
                    raise
        raise OSError(f"no ephemeral port free for both UDP and TCP in {_BIND_TRIES} tries")

    def _make(self, kind: type[socketserver.BaseServer], port: int) -> socketserver.BaseServer:
        # dnslib's DNSServer wires resolver and logger into the socketserver;
        # its own thread handling is not used (see start()).
        logger = _QuietLogger()
        wrapper = DNSServer(
            self, address=self.host, port=port, logger=logger, handler=DNSHandler, server=kind
        )
        server: socketserver.BaseServer = wrapper.server
        return server

    # -- answering -------------------------------------------------------------

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        """dnslib's resolver hook: answer one query (see the module docstring)."""
        qname = _fqdn(str(request.q.qname))
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        reply = request.reply()
        with self._lock:
            self._queries.append((qname, qtype))
            records = self._records.get(qname)
        if self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        forced = self.rcodes.get(qtype, self.rcodes.get("*"))
        if forced is not None:
            reply.header.rcode = getattr(RCODE, forced)
            if forced == "NXDOMAIN":
                reply.add_auth(self._soa(qname))
            return reply
        found = _records_of(records, qtype)
        for ip in found:
            rdata = A(ip) if qtype == "A" else AAAA(ip)
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=self.ttl))
        if not found:
            reply.add_auth(self._soa(qname))
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def _soa(self, qname: str) -> RR:
        """The SOA of the zone owning ``qname`` (RFC 2308's negative caching TTL)."""
        zone = self.zone if qname == self.zone or qname.endswith("." + self.zone) else "."
        ttl = self.negative_ttl
        # serial, refresh, retry, expire, minimum; the minimum is the negative TTL.
        soa = SOA("ns.dns." + self.zone, "hostmaster." + self.zone, (1, 60, 60, 60, ttl))
        return RR(zone, QTYPE.SOA, rdata=soa, ttl=ttl)


def _bound_port(server: socketserver.BaseServer) -> int:
    port: int = server.socket.getsockname()[1]  # type: ignore[attr-defined]
    return port


def _records_of(records: _Records | None, qtype: str) -> tuple[str, ...]:
    if records is None:
        return ()
    if qtype == "A":
        return records.a
    if qtype == "AAAA":
        return records.aaaa
    return ()
