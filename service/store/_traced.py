"""A Store wrapper that makes every data call a child span of the RPC being served.

So a trace shows where a call's time went: ``store.get_user``,
``store.create_user``, ``store.batch_create``, and one ``store.list_users``
span per keyset chunk. ``ping`` (the health probe, every half second) and
``open``/``close`` are not traced: they would flood the traces.

Spans follow the OpenTelemetry database conventions: kind CLIENT, attributes
``db.system`` (``sqlite`` or ``postgresql``) and ``db.operation``, plus
``meshdemo.replica`` so the mesh's waterfall names the replica. A
:class:`~service.errors.ServiceError` with a caller's code (AlreadyExists,
InvalidArgument) is recorded as an exception event; an unavailable store or
an unexpected failure also sets the span's status to ERROR.

Built only when the replica has a tracer provider: without one the replica
talks to its store directly, at no cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from service.domain import NewUser, User
from service.errors import ServiceError, Unavailable
from service.store._base import Store

__all__ = ["TracedStore", "db_system"]


def db_system(url: str) -> str:
    """The ``db.system`` value of a store URL (``sqlite``, ``postgresql``, else its scheme)."""
    scheme = url.split("://", 1)[0].lower()
    return "postgresql" if scheme in ("postgresql", "postgres") else scheme


class TracedStore:
    """The :class:`~service.store.Store` protocol around another store, one span per data call.

    Args:
        inner: The store that does the work.
        tracer_provider: Where spans come from.
        system: ``db.system`` (see :func:`db_system`).
        replica: The replica's name, set as ``meshdemo.replica`` on every span.
    """

    def __init__(
        self, inner: Store, tracer_provider: TracerProvider, *, system: str, replica: str
    ) -> None:
        self.inner = inner
        self._tracer = trace.get_tracer("meshdemo.store", tracer_provider=tracer_provider)
        self._attributes: dict[str, AttributeValue] = {
            "db.system": system,
            "meshdemo.replica": replica,
        }

    def __repr__(self) -> str:
        return f"TracedStore({self.inner!r})"

    @contextlib.contextmanager
    def _span(self, name: str, operation: str, **extra: int) -> Iterator[Span]:
        attributes: dict[str, AttributeValue] = {
            **self._attributes,
            "db.operation": operation,
            **extra,
        }
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            _record(span, exc)
            raise
        finally:
            span.end()

    async def open(self) -> None:
        """Open the inner store (not traced)."""
        await self.inner.open()

    async def close(self) -> None:
        """Close the inner store (not traced)."""
        await self.inner.close()

    async def ping(self) -> None:
        """Probe the inner store (not traced: health probes would flood the traces)."""
        await self.inner.ping()

    async def get_user(self, user_id: str) -> User | None:
        """The inner store's user, under a ``store.get_user`` span."""
        with self._span("store.get_user", "SELECT") as span:
            user = await self.inner.get_user(user_id)
            span.set_attribute("meshdemo.found", user is not None)
            return user

    async def create_user(self, new: NewUser) -> User:
        """Create through the inner store, under a ``store.create_user`` span."""
        with self._span("store.create_user", "INSERT"):
            return await self.inner.create_user(new)

    async def create_users(self, news: Sequence[NewUser]) -> list[User]:
        """Create atomically through the inner store, under a ``store.batch_create`` span."""
        with self._span("store.batch_create", "INSERT", **{"meshdemo.batch_size": len(news)}):
            return await self.inner.create_users(news)

    async def iter_users(self, after_id: str | None, limit: int) -> AsyncIterator[User]:
        """One chunk of the inner store's listing, under a ``store.list_users`` span.

        The span ends when the chunk is exhausted or the reader stops early.
        """
        with self._span("store.list_users", "SELECT", **{"meshdemo.limit": limit}) as span:
            rows = 0
            try:
                async for user in self.inner.iter_users(after_id, limit):
                    rows += 1
                    yield user
            finally:
                span.set_attribute("meshdemo.rows", rows)


def _record(span: Span, exc: BaseException) -> None:
    """Record ``exc``: ERROR unless it is a deliberate caller's error; cancellation is no error."""
    if isinstance(exc, GeneratorExit):
        return  # The reader stopped early: the chunk simply ended.
    if not isinstance(exc, Exception):
        span.set_attribute("meshdemo.cancelled", True)
        return
    span.record_exception(exc)
    if isinstance(exc, Unavailable) or not isinstance(exc, ServiceError):
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
