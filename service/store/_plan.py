"""The write rules both backends share, decided in memory inside a write transaction.

A backend opens its write transaction, reads the stored rows that the batch
could collide with (same non-empty ``request_id``, same ``email_key``), and
asks :func:`plan_creates` what to do. The plan either raises the domain error
or lists the users to return (in input order) and the rows to insert. Because
the reads and the inserts share one transaction, the only race left is a
concurrent transaction committing the same key between the read and the
insert; the database's unique constraints catch it and the backend retries
the whole transaction, whose fresh read then sees the winner.

Rules, applied to each item in input order (the first failure wins):
1. a non-empty ``request_id`` seen before (stored, or earlier in this batch)
   with the same fingerprint is a replay: the earlier user is returned and
   nothing is stored; with another fingerprint it is InvalidArgument;
2. an ``email_key`` taken (stored, or earlier in this batch) is AlreadyExists;
3. anything else becomes a new user with a fresh id and ``created_at = now``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from service.domain import NewUser, User, new_user_id
from service.errors import MAX_QUOTED, AlreadyExists, FieldViolation, InvalidArgument, quoted

__all__ = ["Insert", "Plan", "Stored", "plan_creates", "sorted_ids"]


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored user together with the fingerprint of the request that made it."""

    user: User
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A row to insert: the new user and the request it came from."""

    user: User
    new: NewUser


@dataclass(frozen=True, slots=True)
class Plan:
    """What a create does: ``users`` in input order, ``inserts`` to store."""

    users: list[User]
    inserts: list[Insert]


def sorted_ids(count: int) -> list[str]:
    """``count`` fresh ids in ascending order, so a batch lists in input order."""
    return sorted(new_user_id() for _ in range(count))


def plan_creates(
    news: Sequence[NewUser],
    *,
    replays: Mapping[str, Stored],
    taken_emails: Collection[str],
    now: datetime,
    batch: bool,
    ids: Callable[[int], list[str]] = sorted_ids,
) -> Plan:
    """Apply the create rules to ``news`` given the colliding stored rows.

    Args:
        news: validated users to create.
        replays: stored rows by request id, for the request ids in ``news``.
        taken_emails: stored email keys among those of ``news``.
        now: the ``created_at`` of every new user.
        batch: name fields by index (``users[3].email``) as a batch does.
        ids: the source of fresh ids (ascending), a seam for tests.

    Raises:
        InvalidArgument: a request id reused with different fields.
        AlreadyExists: an email key already taken.
    """
    # request id -> (fingerprint, the stored user or the index of the new one)
    seen: dict[str, tuple[str, User | int]] = {
        key: (stored.fingerprint, stored.user) for key, stored in replays.items()
    }
    taken = set(taken_emails)
    decided: list[User | int] = []  # a replayed user, or the index of a new one
    for index, new in enumerate(news):
        prefix = f"users[{index}]." if batch else ""
        replayed = _replay(new, seen, prefix)
        if replayed is not None:
            decided.append(replayed)
            continue
        if new.email_key in taken:
            raise _email_taken(new, prefix)
        taken.add(new.email_key)
        decided.append(index)
        if new.request_id:
            seen[new.request_id] = (new.fingerprint(), index)
    return _materialize(news, decided, now, ids)


def _replay(
    new: NewUser, seen: Mapping[str, tuple[str, User | int]], prefix: str
) -> User | int | None:
    if not new.request_id or new.request_id not in seen:
        return None
    fingerprint, earlier = seen[new.request_id]
    if fingerprint != new.fingerprint():
        raise InvalidArgument(
            f"{prefix}request_id {quoted(new.request_id)} was already used with different fields",
            [FieldViolation(f"{prefix}request_id", "reused with different fields")],
        )
    return earlier


def _email_taken(new: NewUser, prefix: str) -> AlreadyExists:
    # An address may be MAX_EMAIL long: the message and the detail quote at
    # most MAX_QUOTED characters of it, as every error does with client input.
    where = f"{prefix}email: " if prefix else ""
    email = new.email if len(new.email) <= MAX_QUOTED else quoted(new.email)
    return AlreadyExists(
        "user", new.email[:MAX_QUOTED], f"{where}a user with email {email} already exists"
    )


def _materialize(
    news: Sequence[NewUser],
    decided: list[User | int],
    now: datetime,
    ids: Callable[[int], list[str]],
) -> Plan:
    fresh = [i for i, d in enumerate(decided) if d == i]  # later replays point back
    made = {
        index: User(
            id=user_id,
            name=news[index].name,
            email=news[index].email,
            age=news[index].age,
            roles=tuple(news[index].roles),
            created_at=now,
        )
        for index, user_id in zip(fresh, ids(len(fresh)), strict=True)
    }
    users = [made[d] if isinstance(d, int) else d for d in decided]
    return Plan(users=users, inserts=[Insert(made[i], news[i]) for i in fresh])
