"""Helpers for the resolver tests: waits and update collectors (the clock is client.testing's).

The real DNS server the tests ask is ``client.testing.DnsServer`` (one for the mesh,
the tests and the benchmarks); ``conftest.py`` makes one per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from client._resolver import Address
from client.testing import eventually

#: The zone of the names the resolver tests publish.
ZONE = "mesh.test"


async def next_update(
    updates: AsyncIterator[frozenset[Address]], within: float = 5.0
) -> frozenset[Address]:
    """The next set from ``updates``, failing the test after ``within`` seconds."""
    return await asyncio.wait_for(anext(updates), within)


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
