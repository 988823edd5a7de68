"""A real DNS server for the benchmarks: dnslib on 127.0.0.1, an ephemeral UDP port.

It publishes A records the benchmark changes while it runs (a replica removed
from DNS as Kubernetes would remove a dead pod's endpoint). Only loopback
addresses are ever published.
"""

from __future__ import annotations

import threading
from typing import Any

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import DNSServer

__all__ = ["BenchDns"]

_ZONE = "mesh.test."


class _Quiet:
    """dnslib logger that logs nothing (one line per query would swamp the output)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class BenchDns:
    """Serves A records for names under ``mesh.test.``; AAAA and others get empty answers.

    Use it as a context manager; ``port`` is bound once entered.

    Args:
        ttl: TTL in seconds of every answer (short, so clients re-resolve soon).
    """

    def __init__(self, ttl: int = 1) -> None:
        self.ttl = ttl
        self.port = 0
        self.queries = 0
        self._records: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._server: DNSServer | None = None

    def publish(self, name: str, addresses: list[str]) -> None:
        """Answer ``name`` (a fully qualified name, trailing dot) with these A records."""
        if not name.endswith("."):
            raise ValueError(f"use a fully qualified name with a trailing dot, not {name!r}")
        with self._lock:
            self._records[name] = tuple(addresses)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """dnslib's resolver hook: answer one query from the published records."""
        qname = str(request.q.qname)
        reply = request.reply()
        with self._lock:
            self.queries += 1
            known = qname in self._records
            found = self._records.get(qname, ()) if request.q.qtype == QTYPE.A else ()
        for ip in found:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
        if not found:
            soa = SOA("ns." + _ZONE, "admin." + _ZONE, (1, 60, 60, 60, self.ttl))
            reply.add_auth(RR(_ZONE, QTYPE.SOA, rdata=soa, ttl=self.ttl))
            if not known:
                reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def __enter__(self) -> BenchDns:
        server = DNSServer(self, address="127.0.0.1", port=0, logger=_Quiet())
        self.port = server.server.server_address[1]
        # A short poll interval so that leaving the block does not wait half a second.
        server.thread = threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        server.thread.start()
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server.server.server_close()
            self._server.thread.join(timeout=5)
            self._server = None
