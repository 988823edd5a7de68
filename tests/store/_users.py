"""Small builders of valid users for the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.domain import NewUser, User


def new_user(
    n: int,
    *,
    request_id: str = "",
    name: str | None = None,
    email: str | None = None,
    age: int | None = None,
    roles: tuple[str, ...] = ("user",),
) -> NewUser:
    """A valid NewUser numbered ``n``; keyword arguments override its fields."""
    return NewUser(
        name=f"User {n}" if name is None else name,
        email=f"user{n}@example.com" if email is None else email,
        age=20 + n % 100 if age is None else age,
        roles=roles,
        request_id=request_id,
    )


async def collect(users: AsyncIterator[User]) -> list[User]:
    """Drain an async iterator of users into a list."""
    return [user async for user in users]
