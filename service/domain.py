"""Domain rules of the user service: the user value, validation, ids, page tokens.

Nothing here knows about gRPC messages or SQL. The servicer translates protos
into these values; stores persist them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshdemo import contract
from service.errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "EMAIL_RE",
    "MAX_AGE",
    "MAX_BATCH",
    "MAX_CHAT_TEXT",
    "MAX_EMAIL",
    "MAX_ID",
    "MAX_NAME",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN",
    "MAX_REQUEST_ID",
    "ROLES",
    "NewUser",
    "User",
    "decode_page_token",
    "encode_page_token",
    "new_user_id",
    "resolve_page_size",
    "utc_now",
    "validate_new_user",
    "validate_new_users",
    "validate_user_id",
]

MAX_NAME = 100
MAX_AGE = 150
MAX_REQUEST_ID = 128
MAX_EMAIL = 254
#: Read from the contract (limits.proto), as are the page sizes and the roles.
MAX_BATCH = contract.MAX_BATCH
MAX_CHAT_TEXT = 4096
#: Ids are 26 characters (see :func:`new_user_id`); the bound leaves room for
#: ids of other origins while keeping every id cheap to log and to quote.
MAX_ID = 64
#: Tokens we issue are about 40 characters; anything longer is not ours.
MAX_PAGE_TOKEN = 512
DEFAULT_PAGE_SIZE = contract.DEFAULT_PAGE_SIZE
MAX_PAGE_SIZE = contract.MAX_PAGE_SIZE
#: PostgreSQL text cannot hold NUL, so no stored or looked-up string may carry
#: it, whatever the store: the contract does not depend on the backend.
_NUL = "\x00"
_NO_NUL = "must not contain the NUL character"
#: The closed set of roles, by their names in the contract without the prefix.
ROLES = frozenset(contract.ROLES)

# A pragmatic address check: one @, a local part without spaces, a domain of
# dot-separated labels with a final label of letters. Deliberately narrower
# than RFC 5322 (no quoted local parts, no IP literals).
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user as a client asks to create it; ``request_id`` may be empty."""

    name: str
    email: str
    age: int
    roles: tuple[str, ...] = ("user",)
    request_id: str = ""

    @property
    def email_key(self) -> str:
        """The uniqueness key of the address: letter case does not matter."""
        return self.email.casefold()

    def fingerprint(self) -> str:
        """A digest of the fields, to tell a replayed request from a reused key."""
        canonical = "\x1f".join(
            [self.name, self.email_key, str(self.age), ",".join(sorted(self.roles))]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    """A stored user."""

    id: str
    name: str
    email: str
    age: int
    roles: tuple[str, ...]
    created_at: datetime = field(compare=True)


def _violations_of(user: NewUser, prefix: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []

    def bad(name: str, why: str) -> None:
        out.append(FieldViolation(f"{prefix}{name}", why))

    if not 1 <= len(user.name) <= MAX_NAME or not user.name.strip():
        bad("name", f"must be 1 to {MAX_NAME} characters and not blank")
    elif _NUL in user.name:
        bad("name", _NO_NUL)
    if len(user.email) > MAX_EMAIL or not EMAIL_RE.fullmatch(user.email):
        bad("email", "must be an e-mail address such as ada@example.com")
    if not 0 <= user.age <= MAX_AGE:
        bad("age", f"must be between 0 and {MAX_AGE}")
    unknown = [r for r in user.roles if r not in ROLES]
    if not user.roles:
        bad("roles", "must hold at least one role")
    elif len(user.roles) > len(ROLES):
        bad("roles", f"must hold at most {len(ROLES)} roles, each once")
    elif unknown:
        bad("roles", f"unknown role(s) {unknown}; allowed: {sorted(ROLES)}")
    elif len(set(user.roles)) != len(user.roles):
        bad("roles", "must not repeat a role")
    if len(user.request_id) > MAX_REQUEST_ID:
        bad("request_id", f"must be at most {MAX_REQUEST_ID} characters")
    elif _NUL in user.request_id:
        bad("request_id", _NO_NUL)
    return out


def validate_user_id(value: str, field: str = "id") -> str:
    """Return ``value`` if it can be a user id; raise InvalidArgument otherwise.

    The message never quotes the value: only its length.
    """
    if not value:
        raise InvalidArgument(f"{field} is required", [FieldViolation(field, "must not be empty")])
    if _NUL in value:
        raise InvalidArgument(f"{field} {_NO_NUL}", [FieldViolation(field, _NO_NUL)])
    if len(value) > MAX_ID:
        raise InvalidArgument(
            f"{field} is too long: {len(value)} characters, at most {MAX_ID}",
            [FieldViolation(field, f"must be at most {MAX_ID} characters")],
        )
    return value


def validate_new_user(user: NewUser) -> NewUser:
    """Return ``user`` if valid; raise InvalidArgument listing every bad field."""
    violations = _violations_of(user, "")
    if violations:
        raise InvalidArgument("invalid user: " + _summary(violations), violations)
    return user


def validate_new_users(users: Sequence[NewUser]) -> Sequence[NewUser]:
    """Validate a batch: bounded in size, every bad item reported by index."""
    if not users:
        raise InvalidArgument(
            "a batch needs at least one user", [FieldViolation("users", "empty batch")]
        )
    if len(users) > MAX_BATCH:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH} users",
            [FieldViolation("users", f"more than {MAX_BATCH} items")],
        )
    violations = [v for i, u in enumerate(users) for v in _violations_of(u, f"users[{i}].")]
    violations += _duplicates_in_batch(users)
    if violations:
        raise InvalidArgument(
            f"{len(violations)} invalid field(s) in batch: " + _summary(violations), violations
        )
    return users


def _duplicates_in_batch(users: Sequence[NewUser]) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    seen_email: dict[str, int] = {}
    seen_key: dict[str, int] = {}
    for i, u in enumerate(users):
        first = seen_email.setdefault(u.email_key, i)
        if first != i:
            out.append(FieldViolation(f"users[{i}].email", f"repeats users[{first}].email"))
        if u.request_id:
            first = seen_key.setdefault(u.request_id, i)
            if first != i:
                out.append(
                    FieldViolation(f"users[{i}].request_id", f"repeats users[{first}].request_id")
                )
    return out


def _summary(violations: Iterable[FieldViolation]) -> str:
    parts = [f"{v.field}: {v.description}" for v in violations]
    text = "; ".join(parts[:5])
    return text + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


def new_user_id(now_ms: int | None = None) -> str:
    """A 26-character id that sorts by creation time (48-bit ms time + 80 random bits).

    Ids are Crockford base32, so listing by id is listing in creation order,
    up to clock skew between replicas.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(alphabet[rem])
    return "".join(reversed(chars))


def utc_now() -> datetime:
    """Now, in UTC, at the microsecond precision both stores keep."""
    return datetime.now(UTC)


_TOKEN_PREFIX = "v1:"


def encode_page_token(last_id: str) -> str:
    """The opaque token that resumes a listing right after the user ``last_id``."""
    raw = (_TOKEN_PREFIX + last_id).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> str | None:
    """The id to resume after, or None for an empty token; INVALID_ARGUMENT if malformed."""
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN:
        raise InvalidArgument(
            f"page_token is too long: at most {MAX_PAGE_TOKEN} characters",
            [FieldViolation("page_token", "malformed; pass back a next_page_token unchanged")],
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if (
        not raw.startswith(_TOKEN_PREFIX)
        or len(raw) == len(_TOKEN_PREFIX)
        or len(raw) > 200
        or _NUL in raw
    ):
        raise InvalidArgument(
            "page_token is not a token this service issued",
            [FieldViolation("page_token", "malformed; pass back a next_page_token unchanged")],
        )
    return raw[len(_TOKEN_PREFIX) :]


def resolve_page_size(requested: int) -> int:
    """Apply the paging rules: 0 means the default, large values are capped."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", [FieldViolation("page_size", "negative")]
        )
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)
