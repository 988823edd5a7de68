"""Keyset pagination shared by the backends: the listing half of the Store contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from service.domain import User

__all__ = ["keyset_pages"]


async def keyset_pages(
    users_after: Callable[[str, int], Awaitable[list[User]]],
    after_id: str | None,
    limit: int,
    chunk_size: int,
) -> AsyncIterator[User]:
    """Up to ``limit`` users after ``after_id`` in id order, one short query per chunk.

    ``users_after(last_id, n)`` returns at most ``n`` users with id greater
    than ``last_id``, in id order, and holds no connection or transaction once
    it returns: memory stays bounded by one chunk and a slow or cancelled
    consumer costs the database nothing between chunks.
    """
    last = after_id or ""  # every id is non-empty, so "" precedes them all
    remaining = limit
    while remaining > 0:
        want = min(chunk_size, remaining)
        users = await users_after(last, want)
        for user in users:
            yield user
        if len(users) < want:
            return
        remaining -= len(users)
        last = users[-1].id
