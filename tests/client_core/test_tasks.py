"""cancel_and_wait: children end, our own cancellation survives."""

from __future__ import annotations

import asyncio

import pytest

from client._tasks import cancel_and_wait


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_children_are_cancelled_and_their_cancellation_is_absorbed() -> None:
    tasks = [asyncio.create_task(_forever()) for _ in range(3)]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks)
    assert all(t.cancelled() for t in tasks)


async def test_a_cancel_aimed_at_the_caller_is_not_lost_and_no_child_is_left_pending() -> None:
    slow_exit = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await slow_exit.wait()  # takes a while to clean up

    children = [asyncio.create_task(stubborn()), asyncio.create_task(_forever())]
    await asyncio.sleep(0)
    closer = asyncio.create_task(cancel_and_wait(*children))
    await asyncio.sleep(0.01)
    closer.cancel()  # the caller is cancelled while it waits
    await asyncio.sleep(0.01)
    slow_exit.set()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert all(child.done() for child in children)


async def test_a_child_failure_still_propagates() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)
