"""Publishing address sets: a latest-value feed and the resolver task around it.

``AddressFeed`` keeps the newest address set and hands it to any number of
consumers; ``FeedResolver`` is the lifecycle the DNS and Kubernetes resolvers
share: one background task, started lazily, that publishes into the feed and
is cancelled by ``close()``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator

from client._resolver import Address
from client._tasks import cancel_and_wait

__all__ = ["AddressFeed", "FeedResolver"]

#: Seconds ``close()`` waits for the cancelled resolver task.
_CLOSE_WAIT = 5.0
_log = logging.getLogger(__name__)


class AddressFeed:
    """The newest address set, broadcast to every consumer.

    Invariants: a set is stored only when it differs from the current one;
    each consumer first gets the current set (once one is known), then every
    newer set it has not seen; a slow consumer skips sets that were replaced
    before it looked (each set is complete, so nothing is lost). After
    ``close()`` every consumer's iteration ends.
    """

    def __init__(self) -> None:
        self._current: frozenset[Address] | None = None
        self._version = 0
        self._closed = False
        # Replaced on every change: waiters hold the old one, which is set.
        self._changed = asyncio.Event()

    @property
    def current(self) -> frozenset[Address] | None:
        """The newest set, or None before the first one was published."""
        return self._current

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def publish(self, addresses: frozenset[Address]) -> bool:
        """Store ``addresses`` if it differs from the current set.

        Returns:
            True when the set changed and consumers were woken.
        """
        if self._closed or addresses == self._current:
            return False
        self._current = addresses
        self._version += 1
        self._wake()
        return True

    def close(self) -> None:
        """End every consumer's iteration; later publishes are ignored."""
        if not self._closed:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def subscribe(self) -> AsyncIterator[frozenset[Address]]:
        """Yield the current set (when known) and each newer one, until closed."""
        seen = 0
        while not self._closed:
            if self._version != seen and self._current is not None:
                seen = self._version
                yield self._current
                continue
            await self._changed.wait()


class FeedResolver(abc.ABC):
    """A resolver whose one background task publishes into an ``AddressFeed``.

    Subclasses implement ``_run()``, which publishes with ``_publish()`` and
    runs until cancelled (it may also return once its set can never change).
    The task starts at the first ``updates()`` consumer or at ``start()``.
    A failed resolution calls ``_record_failure()`` with its reason in words;
    ``_publish()`` sets or clears that reason (see ``last_failure``).
    """

    def __init__(self) -> None:
        self._feed = AddressFeed()
        self._task: asyncio.Task[None] | None = None
        self._last_failure: str | None = None

    def start(self) -> None:
        """Start resolving now, rather than at the first ``updates()`` consumer.

        Must be called from a running event loop; a second call does nothing.

        Raises:
            RuntimeError: The resolver was closed.
        """
        if self._feed.closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._guarded_run(), name=f"resolver {self!r}"
            )

    async def updates(self) -> AsyncIterator[frozenset[Address]]:
        """Yield the full address set whenever it changes, until ``close()``.

        Each consumer first gets the latest known set; any number of
        consumers may iterate at once.
        """
        if self._feed.closed:
            return
        self.start()
        async for addresses in self._feed.subscribe():
            yield addresses

    @property
    def current(self) -> frozenset[Address] | None:
        """The latest published set, or None if none is known yet."""
        return self._feed.current

    @property
    def last_failure(self) -> str | None:
        """Why the last resolution gave no address, in words; None once one found some.

        Set by a failure of the source (the last set is kept) and by an answer
        that names no address (the empty set is published).
        """
        return self._last_failure

    async def close(self) -> None:
        """Stop the background task and end every ``updates()`` iterator.

        Waits at most ``_CLOSE_WAIT`` seconds for the cancelled task: a source
        that does not end (a query the library keeps waiting on) must not hang
        the client's close. The task is left cancelled and the fact logged.
        """
        self._feed.close()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(_CLOSE_WAIT):  # wait_for (3.11) can drop a cancel
                    await asyncio.shield(cancel_and_wait(task))
            except TimeoutError:
                _log.warning("%r: resolver task did not end within %.1f s", self, _CLOSE_WAIT)
        await self._aclose_resources()

    async def _aclose_resources(self) -> None:  # noqa: B027 - an optional hook
        """Release what the resolver owns; called once the task has ended."""

    def _record_failure(self, reason: str) -> None:
        """The source failed; the last set stays published."""
        self._last_failure = reason

    def _publish(self, addresses: frozenset[Address], *, why_empty: str | None = None) -> None:
        """Publish ``addresses``; ``why_empty`` is the reason an empty set is empty."""
        # Invariant: a non-empty answer always clears the failure, changed or not.
        self._last_failure = None if addresses else why_empty
        if self._feed.publish(addresses):
            _log.info("%r: %d endpoint(s): %s", self, len(addresses), sorted(map(str, addresses)))

    @abc.abstractmethod
    async def _run(self) -> None:
        """Resolve and publish until cancelled."""

    async def _guarded_run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a discovery failure (those are retried inside _run):
            # end the consumers rather than leave them waiting forever.
            _log.exception("%r: resolver task failed; closing", self)
            self._feed.close()
