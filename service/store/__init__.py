"""Stores: one interface, two backends chosen by URL.

``sqlite:///path/to/file.db`` (embedded default; several local replicas may
share one file) or ``postgresql://user@host:port/db`` (the cluster's store).
"""

from __future__ import annotations

from service.store._base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(url: str) -> Store:
    """Build the store for ``url`` (not yet opened: call ``await store.open()``)."""
    if url.startswith("sqlite://"):
        from service.store._sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from service.store._postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///FILE or postgresql://...")
