"""The store interface that every backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from service.domain import NewUser, User
from service.errors import Unavailable

__all__ = ["Store", "StoreUnavailable"]


class StoreUnavailable(Unavailable):
    """The backend cannot be reached or answered with a transient failure.

    It is an UNAVAILABLE service error (safe to retry on another replica);
    the health watcher turns it into NOT_SERVING.
    """


@runtime_checkable
class Store(Protocol):
    """Persistence of users. Every method is safe to call concurrently.

    Invariants every backend keeps:
    - ``email_key`` is unique: a second user with it raises AlreadyExists.
    - a non-empty ``request_id`` is unique: creating again with the same key
      and the same fingerprint returns the first user and stores nothing; with
      another fingerprint it raises InvalidArgument.
    - ``create_users`` stores all users in one transaction, or none.
    - ``iter_users`` yields in ascending id order and never holds more than
      one chunk of rows in memory nor a transaction open between chunks.

    Truthful health (what ``ping`` promises):
    - ``ping`` passes only while reads *and* writes work on the store the
      replica was started with; the health probe publishes SERVING exactly
      then;
    - a write is acknowledged only if it is durable in that store: never into
      a SQLite file that was deleted or replaced under the replica;
    - when the store is known unusable, calls raise StoreUnavailable at once
      (UNAVAILABLE: the client retries on another replica) instead of waiting
      for a lock or a pool timeout;
    - the store heals by itself: a later ``ping`` (or call) that finds the
      store usable again reopens it, with no restart. SQLite never creates a
      new file except at the first open; see each backend for its rules.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema; idempotent across replicas."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def ping(self) -> None:
        """Return if reads and writes work on the store, else raise StoreUnavailable.

        Cheap enough to run every health interval; it is also the way back
        from an outage (it reconnects or reopens when the store is usable).
        """

    async def get_user(self, user_id: str) -> User | None:
        """The user with ``user_id``, or None."""

    async def create_user(self, new: NewUser) -> User:
        """Store one validated user (see the idempotency invariant)."""

    async def create_users(self, news: Sequence[NewUser]) -> list[User]:
        """Store validated users atomically, returning them in input order."""

    def iter_users(self, after_id: str | None, limit: int) -> AsyncIterator[User]:
        """Up to ``limit`` users with id greater than ``after_id``, in id order."""
        ...
