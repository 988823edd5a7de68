"""Helpers for the resolver tests: a manual clock, waits and update collectors.

The real DNS server the tests ask is ``mesh.dns.DnsServer`` (one for the mesh,
the tests and the benchmarks); ``conftest.py`` makes one per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from client._resolver import Address

#: The zone of the names the resolver tests publish.
ZONE = "mesh.test"


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
