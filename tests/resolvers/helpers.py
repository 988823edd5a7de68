"""Helpers for the resolver tests: a manual clock and a real DNS server.

The DNS server is dnslib's ``DNSServer`` on 127.0.0.1, an ephemeral UDP port,
answering from records the test changes while it runs. Only loopback
addresses appear in its records.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import DNSServer

from client._resolver import Address

ZONE = "mesh.test."


class ManualClock:
    """A clock that moves only when the test says so, with sleeps that follow it.

    ``sleep()`` returns once ``advance()`` has moved the clock past its
    deadline; ``sleeps`` records every requested duration, in order.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock and let woken sleepers run."""
        self.now += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.now + 1e-9]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now + 1e-9]
        for _, future in due:
            if not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)

    @property
    def pending(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, f in self._sleepers if not f.done())


@dataclass
class Zone:
    """Records served by the test DNS server; changed by tests while it runs."""

    a: dict[str, list[str]] = field(default_factory=dict)
    aaaa: dict[str, list[str]] = field(default_factory=dict)
    ttl: int = 1
    negative_ttl: int = 3600
    servfail: bool = False
    queries: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, a: list[str] | None = None, aaaa: list[str] | None = None) -> None:
        with self.lock:
            self.a[name] = list(a or [])
            self.aaaa[name] = list(aaaa or [])

    def delete(self, name: str) -> None:
        with self.lock:
            self.a.pop(name, None)
            self.aaaa.pop(name, None)

    def count(self, qtype: str, name: str | None = None) -> int:
        with self.lock:
            return sum(1 for n, t in self.queries if t == qtype and name in (None, n))


class _ZoneResolver:
    """dnslib resolver interface: answer from a ``Zone``."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        zone = self.zone
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        reply = request.reply()
        with zone.lock:
            zone.queries.append((qname, qtype))
            if zone.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            exists = qname in zone.a
            found = {"A": zone.a, "AAAA": zone.aaaa}.get(qtype, {}).get(qname, [])
            rdata = A if qtype == "A" else AAAA
            for ip in found:
                reply.add_answer(RR(qname, QTYPE.reverse[qtype], rdata=rdata(ip), ttl=zone.ttl))
            if not found:
                # A negative answer carries the zone's SOA (RFC 2308).
                soa = SOA("ns." + ZONE, "admin." + ZONE, (1, 60, 60, 60, zone.negative_ttl))
                reply.add_auth(RR(ZONE, QTYPE.SOA, rdata=soa, ttl=zone.negative_ttl))
                if not exists:
                    reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _QuietLogger:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class DnsTestServer:
    """A real UDP DNS server on 127.0.0.1 that can be stopped and restarted."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.port = 0
        self._server: DNSServer | None = None

    def start(self) -> None:
        server = DNSServer(
            _ZoneResolver(self.zone), address="127.0.0.1", port=self.port, logger=_QuietLogger()
        )
        self.port = server.server.server_address[1]
        # A short poll interval so that stop() does not wait half a second.
        server.thread = threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        server.thread.start()
        self._server = server

    def stop(self) -> None:
        """Stop answering and release the port (queries are then refused)."""
        if self._server is not None:
            self._server.stop()
            self._server.server.server_close()
            self._server.thread.join(timeout=5)
            self._server = None


async def next_update(
    updates: AsyncIterator[frozenset[Address]], within: float = 5.0
) -> frozenset[Address]:
    """The next set from ``updates``, failing the test after ``within`` seconds."""
    return await asyncio.wait_for(anext(updates), within)


async def eventually(predicate: Any, within: float = 5.0) -> None:
    """Wait (polling, bounded) until ``predicate()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def addrs(*hosts: str, port: int = 50051) -> frozenset[Address]:
    """The address set of ``hosts`` on ``port``."""
    return frozenset(Address(h, port) for h in hosts)


class Collector:
    """Consumes ``updates`` in a background task, keeping every set it gets."""

    def __init__(self, updates: AsyncIterator[frozenset[Address]]) -> None:
        self.sets: list[frozenset[Address]] = []
        self.ended = False
        self._task = asyncio.get_running_loop().create_task(self._consume(updates))

    async def _consume(self, updates: AsyncIterator[frozenset[Address]]) -> None:
        async for addresses in updates:
            self.sets.append(addresses)
        self.ended = True

    async def wait_for(self, count: int, within: float = 5.0) -> frozenset[Address]:
        """Wait until ``count`` sets arrived; the newest one."""
        await eventually(lambda: len(self.sets) >= count or self._task.done(), within)
        assert len(self.sets) >= count, f"iteration ended after {self.sets}"
        return self.sets[-1]

    async def wait_ended(self, within: float = 5.0) -> None:
        """Wait until the iteration ended by itself."""
        await asyncio.wait_for(asyncio.shield(self._task), within)
        assert self.ended

    async def stop(self) -> None:
        """Stop consuming (for tests that end without ``close()``)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
