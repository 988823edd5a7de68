"""Bearer tokens: mint the HS256 JWTs the service verifies (for tests, demos and the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jwt

__all__ = ["mint_token"]


def mint_token(
    secret: str,
    sub: str = "dev",
    roles: Sequence[str] = ("admin",),
    ttl_s: float = 3600,
    *,
    clock: Callable[[], float] = time.time,
) -> str:
    """Mint an HS256 JWT carrying ``sub``, ``roles``, ``iat`` and ``exp``.

    Args:
        secret: The shared HS256 secret (``MESH_AUTH_SECRET`` of the service).
        sub: The subject, the caller's user name.
        roles: Role names: "user", "admin", "moderator". Writes need "admin".
        ttl_s: Seconds until the token expires; must be positive.
        clock: Wall clock in seconds since the epoch (a seam for tests).

    Returns:
        The encoded token, ready for ``authorization: Bearer <token>``.

    Raises:
        ValueError: The secret or subject is empty, or ``ttl_s`` is not positive.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    now = int(clock())
    claims = {"sub": sub, "roles": list(roles), "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm="HS256")
