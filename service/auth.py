"""Bearer-token authentication and the per-method access policy.

Callers send ``authorization: Bearer <JWT>``. Tokens are HS256-signed with the
replica's shared secret and carry ``sub`` (who), ``roles`` (a list of role
names) and ``exp``. :class:`TokenVerifier` turns a header into a
:class:`Principal` or raises :class:`~service.errors.Unauthenticated`;
:func:`access_for` says what a method needs, and :func:`authorize` checks a
principal against it. The auth interceptor publishes the verified principal in
:data:`current_principal` for the servicer of the same call.
"""

from __future__ import annotations

import contextvars
import enum
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from google.rpc import error_details_pb2

from meshdemo.contract import SERVICE_NAME
from service.errors import PermissionDenied, Unauthenticated

__all__ = [
    "ADMIN_ROLE",
    "ALGORITHM",
    "AUTHORIZATION",
    "MAX_SUBJECT",
    "MIN_SECRET_BYTES",
    "Access",
    "Principal",
    "TokenVerifier",
    "access_for",
    "authorization_header",
    "authorize",
    "current_principal",
    "mint_token",
]

#: The only signature algorithm accepted or produced.
ALGORITHM = "HS256"
#: HS256 keys shorter than the hash output are brute-forceable (RFC 7518 3.2).
MIN_SECRET_BYTES = 32
#: The role that grants writes.
ADMIN_ROLE = "admin"
#: Clock skew tolerated on ``exp`` (and ``nbf``/``iat`` when present), seconds.
DEFAULT_LEEWAY_S = 5.0
#: The metadata key of bearer tokens.
AUTHORIZATION = "authorization"
#: The longest ``sub`` accepted: it is logged with every call.
MAX_SUBJECT = 256
_TIME_CLAIMS = ("exp", "iat", "nbf")
#: Verified tokens remembered, so a client's every call does not pay for HMAC
#: and JSON decoding again (that costs more than the rest of the chain).
DEFAULT_CACHE_SIZE = 1024

_SERVICE = f"/{SERVICE_NAME}/"
_WRITES = frozenset({_SERVICE + "CreateUser", _SERVICE + "BatchCreateUsers"})
_EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# Sent with every UNAUTHENTICATED status, as RFC 6750 section 3 asks.
_CHALLENGE = (("www-authenticate", 'Bearer realm="meshdemo"'),)


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller: its subject and the roles its token grants."""

    sub: str
    roles: frozenset[str]


#: The principal of the call being served; None outside a call or when the
#: method is exempt or auth is off. Each RPC runs in its own task, so a value
#: set for one call is never seen by another.
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


class Access(enum.Enum):
    """What a method asks of its caller."""

    #: No token needed (health checks, reflection).
    EXEMPT = "exempt"
    #: Any valid token.
    AUTHENTICATED = "authenticated"
    #: A valid token with the admin role.
    ADMIN = "admin"


def access_for(method: str) -> Access:
    """The access a full method name (``/pkg.Service/Method``) needs.

    Writes need the admin role; health and reflection are exempt; everything
    else, including methods this policy has never heard of, needs a valid
    token (fail closed).
    """
    if method in _WRITES:
        return Access.ADMIN
    if method.startswith(_EXEMPT_PREFIXES):
        return Access.EXEMPT
    return Access.AUTHENTICATED


def authorize(principal: Principal, access: Access) -> None:
    """Raise :class:`PermissionDenied` unless ``principal`` satisfies ``access``."""
    if access is Access.ADMIN and ADMIN_ROLE not in principal.roles:
        raise PermissionDenied(
            f"role {ADMIN_ROLE!r} required",
            details=[
                error_details_pb2.ErrorInfo(
                    reason="MISSING_ROLE",
                    domain="meshdemo",
                    metadata={"required_role": ADMIN_ROLE},
                )
            ],
        )


def _check_secret(secret: str) -> bytes:
    key = secret.encode()
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes for HS256")
    return key


def _unauthenticated(reason: str) -> Unauthenticated:
    return Unauthenticated(reason, trailing_metadata=_CHALLENGE)


class TokenVerifier:
    """Checks bearer tokens signed with one HS256 secret.

    Verified tokens are cached (bounded, oldest evicted first) with their
    expiry: a cached token is accepted again without decoding until
    ``exp + leeway``, then refused as expired. Only tokens that passed full
    verification enter the cache, keyed by the exact token text.

    Args:
        secret: The shared secret, at least :data:`MIN_SECRET_BYTES` bytes.
        leeway_s: Clock skew tolerated on time claims, in seconds.
        cache_size: Verified tokens remembered; 0 disables the cache.
        clock: Unix time in seconds for cached expiry checks; a seam for tests.

    Raises:
        ValueError: The secret is empty or too short.
    """

    __slots__ = ("_cache", "_cache_size", "_clock", "_key", "_leeway")

    def __init__(
        self,
        secret: str,
        *,
        leeway_s: float = DEFAULT_LEEWAY_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = _check_secret(secret)
        self._leeway = leeway_s
        self._cache_size = cache_size
        self._clock = clock
        # token -> (principal, time after which it is expired); insertion ordered.
        self._cache: dict[str, tuple[Principal, float]] = {}

    def __repr__(self) -> str:
        return (
            f"TokenVerifier(algorithm={ALGORITHM!r}, leeway_s={self._leeway}, "
            f"cached={len(self._cache)}/{self._cache_size})"
        )

    def verify(self, authorization_header: str | None) -> Principal:
        """The principal named by an ``authorization`` header value.

        Raises:
            Unauthenticated: The header is missing or not ``Bearer <token>``, or
                the token is malformed, expired, signed with another key or
                algorithm, or lacks a string ``sub`` or a list-of-strings
                ``roles``.
        """
        token = _bearer_token(authorization_header)
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if self._clock() <= expires:
                return principal
            self._cache.pop(token, None)
            raise _unauthenticated("token expired")
        claims = self._decode(token)
        principal = Principal(sub=claims["sub"], roles=_roles_of(claims))
        self._remember(token, principal, claims["exp"] + self._leeway)
        return principal

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        if self._cache_size <= 0:
            return
        while len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (principal, expires)

    def _decode(self, token: str) -> Mapping[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("token expired") from None
        except jwt.InvalidTokenError as exc:
            # Covers bad signatures, foreign or "none" algorithms, malformed
            # tokens and most missing or mistyped registered claims; its
            # messages are fixed texts that never quote the token.
            raise _unauthenticated(f"invalid token: {exc}") from None
        except (TypeError, ValueError, OverflowError):
            # A claim the library chokes on: still the caller's fault.
            raise _unauthenticated("invalid token: malformed claims") from None
        _check_claims(claims)
        return claims


def _check_claims(claims: Mapping[str, Any]) -> None:
    """Refuse what PyJWT lets through: numeric strings as times, odd subjects.

    Invariant: a principal is only built (and cached) from claims that pass.
    """
    for name in _TIME_CLAIMS:
        if name in claims and not _is_time(claims[name]):
            raise _unauthenticated(f"invalid token: {name} claim must be a number")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise _unauthenticated("invalid token: sub claim must be a non-empty string")
    if len(sub) > MAX_SUBJECT:
        raise _unauthenticated(f"invalid token: sub claim longer than {MAX_SUBJECT} characters")


def _is_time(value: object) -> bool:
    # bool is an int in Python, and NaN or infinity compare meaninglessly.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int no float can hold (JSON allows any digits)
        return False


def authorization_header(metadata: Iterable[tuple[str, object]] | None) -> str | None:
    """The one ``authorization`` value of a call's metadata, None when absent.

    Raises:
        Unauthenticated: More than one ``authorization`` entry: which one a
            proxy or this service would honour is ambiguous, so none is.
    """
    values = [value for key, value in metadata or () if key == AUTHORIZATION]
    if len(values) > 1:
        raise _unauthenticated(
            f"{len(values)} authorization headers; send exactly one bearer token"
        )
    if not values:
        return None
    value = values[0]
    return value if isinstance(value, str) else None


def _bearer_token(header: str | None) -> str:
    if not header:
        raise _unauthenticated("missing bearer token")
    scheme, _, token = header.strip().partition(" ")
    # The auth-scheme is case-insensitive (RFC 7235 section 2.1).
    if scheme.lower() != "bearer":
        raise _unauthenticated("authorization is not a bearer token")
    token = token.strip()
    if not token:
        raise _unauthenticated("empty bearer token")
    return token


def _roles_of(claims: Mapping[str, Any]) -> frozenset[str]:
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise _unauthenticated("invalid token: roles claim must be a list of strings")
    return frozenset(roles)


def mint_token(
    secret: str,
    sub: str,
    roles: Iterable[str],
    ttl_s: float,
    *,
    now: float | None = None,
) -> str:
    """Sign a token for tests and development tools.

    Args:
        secret: The shared HS256 secret (at least :data:`MIN_SECRET_BYTES` bytes).
        sub: The subject.
        roles: Role names to grant.
        ttl_s: Lifetime in seconds; negative values mint an already expired token.
        now: The issue time as a Unix timestamp; default the current time.

    Returns:
        The compact JWT.
    """
    issued = time.time() if now is None else now
    claims = {
        "sub": sub,
        "roles": list(roles),
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    return jwt.encode(claims, _check_secret(secret), algorithm=ALGORITHM)
