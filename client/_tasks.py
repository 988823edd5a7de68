"""Task helpers shared by the client's background work."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end, without swallowing our own cancellation.

    ``contextlib.suppress(CancelledError)`` around ``await task`` would also
    eat a cancellation aimed at the *calling* task while it waits, so a
    Ctrl-C landing during ``close()`` would be lost. ``cancelling()`` tells
    the two apart.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
