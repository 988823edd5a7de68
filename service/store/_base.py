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
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema; idempotent across replicas."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def ping(self) -> None:
        """Return if the backend answers a trivial query, else raise StoreUnavailable."""

    async def get_user(self, user_id: str) -> User | None:
        """The user with ``user_id``, or None."""

    async def create_user(self, new: NewUser) -> User:
        """Store one validated user (see the idempotency invariant)."""

    async def create_users(self, news: Sequence[NewUser]) -> list[User]:
        """Store validated users atomically, returning them in input order."""

    def iter_users(self, after_id: str | None, limit: int) -> AsyncIterator[User]:
        """Up to ``limit`` users with id greater than ``after_id``, in id order."""
        ...
