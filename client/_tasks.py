"""Task helpers shared by the client's background work."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "raise_if_cancelled"]


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


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to cancel and nothing took that back.

    For after an await through ``asyncio.wait_for`` in code we do not own: in
    Python 3.11 ``wait_for`` returns the result, and drops the cancellation,
    when the awaited operation completes in the same instant as the cancel
    (fixed in 3.12, where ``wait_for`` is built on ``asyncio.timeout``). The
    request still shows in the task's ``cancelling()`` count.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
