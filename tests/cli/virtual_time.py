"""An asyncio event loop whose clock jumps: sleeping costs no real time.

``loop.time()`` is virtual. Whenever the loop would wait for its next timer,
it moves the clock to that timer instead (real I/O is still polled, without
waiting), so ``asyncio.sleep``, ``asyncio.wait(timeout=...)`` and every task
that sleeps run in virtual time, in a deterministic order. Only for code that
does no real I/O (the load engine with an in-memory client).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
#: Longest real wait when nothing at all is scheduled (a thread may still wake the loop).
_IDLE_POLL = 1.0


class _JumpingSelector(selectors.BaseSelector):
    """Polls a real selector without waiting; a wait moves the loop's virtual clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            return self._real.select(_IDLE_POLL)
        self._loop.virtual_now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time, starting at ``start`` seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self.virtual_now = start
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.virtual_now


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
