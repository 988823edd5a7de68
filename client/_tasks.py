"""Task helpers shared by the client's background work."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait for all to end, without swallowing our own cancellation.

    ``contextlib.suppress(CancelledError)`` around ``await task`` would also
    eat a cancellation aimed at the *calling* task while it waits, so a
    Ctrl-C landing during ``close()`` would be lost. ``cancelling()`` tells
    the two apart.
    """
    for task in tasks:
        task.cancel()
    # Every task is awaited even when we are cancelled meanwhile, so none is
    # left pending; our own cancellation is raised once they have all ended.
    cancelled_meanwhile = False
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                cancelled_meanwhile = True
    if cancelled_meanwhile:
        raise asyncio.CancelledError
