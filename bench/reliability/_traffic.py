"""What the drills and faults share: a bounded stream of reads and writes that keeps its receipts.

:class:`Traffic` sends GetUser and CreateUser calls at a steady rate through a
real :class:`~client.UserClient` until its time or its count runs out, and
records every failure with its code and every acknowledged create. After a
drill, :func:`check_writes` reads the store back and says whether an
acknowledged write was lost or a retried create stored a duplicate.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from client import MeshError, UserClient

__all__ = [
    "Traffic",
    "TrafficResult",
    "WriteAudit",
    "all_users",
    "audit_writes",
    "check_writes",
    "eventually",
]


@dataclass
class TrafficResult:
    """Receipts of one traffic run."""

    gets: int = 0
    creates: int = 0
    #: (operation, status code name, message) of every call that failed.
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: user id -> e-mail address of every create the service acknowledged.
    acknowledged: dict[str, str] = field(default_factory=dict)
    #: loop time at which each acknowledged create (by user id) was sent.
    sent_at: dict[str, float] = field(default_factory=dict)
    #: seconds the slowest failed call took.
    slowest_failure_s: float = 0.0

    @property
    def calls(self) -> int:
        return self.gets + self.creates

    def failures_by_code(self) -> Counter[str]:
        """How many calls failed, by status code name."""
        return Counter(code for _, code, _ in self.failures)

    def acknowledged_between(self, start: float, end: float) -> list[str]:
        """Ids of the acknowledged creates sent from ``start`` to ``end`` (loop time)."""
        return [uid for uid, at in self.sent_at.items() if start <= at <= end]


class Traffic:
    """Reads and writes at ``rps`` for at most ``duration`` seconds (and ``rps * duration`` calls).

    Args:
        client: The client under test.
        known_ids: Ids that exist, for GetUser (creates add to them).
        rps: Calls started per second.
        duration: Seconds of traffic at most.
        write_share: Fraction of calls that are creates.
        tag: Marks this run's e-mail addresses, so :func:`check_writes` finds them.
    """

    def __init__(
        self,
        client: UserClient,
        known_ids: list[str],
        *,
        rps: float = 60.0,
        duration: float = 10.0,
        write_share: float = 0.2,
        tag: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._ids = list(known_ids)
        self._rps = rps
        self._duration = duration
        self._write_share = write_share
        self.tag = tag or uuid.uuid4().hex[:8]
        self._rng = rng or random.Random(7)
        self.result = TrafficResult()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End the run early (calls in flight finish)."""
        self._stop.set()

    async def run(self) -> TrafficResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        calls: set[asyncio.Task[None]] = set()
        for number in range(int(self._rps * self._duration)):
            due = start + number / self._rps
            if self._stop.is_set() or due - start >= self._duration:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(self._one(number))
            calls.add(task)
            task.add_done_callback(calls.discard)
        if calls:
            await asyncio.wait(calls, timeout=15)
        return self.result

    async def _one(self, number: int) -> None:
        write = not self._ids or self._rng.random() < self._write_share
        operation = "create" if write else "get"
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            if write:
                self.result.creates += 1
                email = f"drill-{self.tag}-{number}@example.com"
                user = await self._client.create_user(f"Drill {number}", email, 30)
                self.result.acknowledged[user.id] = email
                self.result.sent_at[user.id] = sent
                self._ids.append(user.id)
            else:
                self.result.gets += 1
                await self._client.get_user(self._rng.choice(self._ids))
        except MeshError as err:
            self.result.failures.append((operation, err.code.name, err.message))
            took = loop.time() - sent
            self.result.slowest_failure_s = max(self.result.slowest_failure_s, took)


async def all_users(client: UserClient, email_prefix: str) -> dict[str, str]:
    """Every stored user whose e-mail starts with ``email_prefix``: id -> e-mail, page by page."""
    found: dict[str, str] = {}
    token = ""
    for _ in range(1000):  # bounded: a million users at most
        listing = client.list_users(page_size=1000, page_token=token, timeout=30)
        count = 0
        async for user in listing:
            count += 1
            if user.email.startswith(email_prefix):
                found[user.id] = user.email
        if count < 1000:
            return found
        token = listing.next_page_token
    raise AssertionError("more users than a test should ever store")


@dataclass(frozen=True)
class WriteAudit:
    """What reading the store back after a run found."""

    lost: int
    duplicates: int
    problems: list[str]


async def audit_writes(client: UserClient, result: TrafficResult, tag: str) -> WriteAudit:
    """Lost acknowledged users and duplicates of a run, read back from the store."""
    stored = await all_users(client, f"drill-{tag}-")
    lost = [f"acknowledged user {uid} ({email}) is lost"
            for uid, email in result.acknowledged.items() if uid not in stored]  # fmt: skip
    emails = list(stored.values())
    twice = [f"{email} stored {emails.count(email)} times"
             for email in set(emails) if emails.count(email) > 1]  # fmt: skip
    problems = lost + twice
    unacknowledged = set(stored) - set(result.acknowledged)
    # A create that failed on the client may still have been stored; that is no loss.
    failed_creates = sum(1 for op, _, _ in result.failures if op == "create")
    if len(unacknowledged) > failed_creates:
        problems.append(f"{len(unacknowledged)} stored users nobody created: {unacknowledged}")
    return WriteAudit(len(lost), sum(emails.count(e) - 1 for e in set(emails)), problems)


async def check_writes(client: UserClient, result: TrafficResult, tag: str) -> list[str]:
    """Problems with the writes of a run: lost acknowledged users, duplicates; [] when none."""
    return (await audit_writes(client, result, tag)).problems


async def eventually(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Wait (polling, bounded) until ``predicate()``; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)
    return loop.time() - start
