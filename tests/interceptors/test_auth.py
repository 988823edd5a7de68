"""Authentication and authorization: the verifier alone, then on the wire."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import string
import time
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.testing import FakeClock
from meshdemo.v1 import user_pb2
from service.auth import (
    MAX_SUBJECT,
    Access,
    Principal,
    TokenVerifier,
    access_for,
    authorize,
    current_principal,
    mint_token,
)
from service.errors import PermissionDenied, Unauthenticated
from service.interceptors import build_server_interceptors
from tests.interceptors.calls import BIDI_STREAM, CLIENT_STREAM, KINDS, SERVER_STREAM, UNARY, call
from tests.interceptors.conftest import (
    SECRET,
    Harness,
    admin_md,
    harness_for,
    reader_md,
    trailers,
)
from tests.interceptors.servicer import TestServicer

VERIFIER = TokenVerifier(SECRET)
OTHER_SECRET = "another-secret-of-enough-length-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token with any header, HMAC-SHA256-signed with ``key`` (unsigned if None)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for an hour, with ``overrides`` (None removes a claim)."""
    base: dict[str, Any] = {"sub": "carol", "roles": ["user"], "exp": int(time.time()) + 3600}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def signed(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


# Every way a header can be refused, by name.
REFUSED_HEADERS: dict[str, str | None] = {
    "missing": None,
    "empty": "",
    "basic scheme": "Basic YWxpY2U6c2VjcmV0",
    "token scheme": f"Token {signed()}",
    "bearer without token": "Bearer",
    "bearer with blanks": "Bearer    ",
    "garbage": "Bearer garbage",
    "two dots of garbage": "Bearer a.b.c",
    "expired": "Bearer " + mint_token(SECRET, "dave", ["admin"], -3600),
    "expired beyond leeway": "Bearer " + mint_token(SECRET, "dave", ["admin"], -30),
    "wrong secret": "Bearer " + mint_token(OTHER_SECRET, "dave", ["admin"], 3600),
    "alg none": "Bearer " + forged({"alg": "none", "typ": "JWT"}, claims(), None),
    "alg none signed": "Bearer " + forged({"alg": "none", "typ": "JWT"}, claims(), SECRET.encode()),
    "HS512": "Bearer " + jwt.encode(claims(), SECRET, algorithm="HS512"),
    "RS256 header": "Bearer " + forged({"alg": "RS256", "typ": "JWT"}, claims(), SECRET.encode()),
    "HS256 tampered payload": "Bearer "
    + ".".join(
        (
            signed().split(".")[0],
            b64(json.dumps(claims(roles=["admin"])).encode()),
            signed().split(".")[2],
        )
    ),
    "missing sub": "Bearer " + signed(sub=None),
    "empty sub": "Bearer " + signed(sub=""),
    "sub not a string": "Bearer " + signed(sub=123),
    "missing exp": "Bearer " + signed(exp=None),
    "exp not a number": "Bearer " + signed(exp="tomorrow"),
    "missing roles": "Bearer " + signed(roles=None),
    "roles a string": "Bearer " + signed(roles="admin"),
    "roles not strings": "Bearer " + signed(roles=["admin", 1]),
    "roles a mapping": "Bearer " + signed(roles={"admin": True}),
    # PyJWT accepts a numeric string as a time; arithmetic on it was INTERNAL.
    "exp a numeric string": "Bearer " + signed(exp=str(int(time.time()) + 3600)),
    "exp a bool": "Bearer " + signed(exp=True),
    "exp a list": "Bearer " + signed(exp=[1]),
    "exp NaN": "Bearer " + forged({"alg": "HS256"}, claims(exp=float("nan")), SECRET.encode()),
    "exp infinite": "Bearer " + forged({"alg": "HS256"}, claims(exp=float("inf")), SECRET.encode()),
    "iat a string": "Bearer " + signed(iat="yesterday"),
    "iat a numeric string": "Bearer " + signed(iat=str(int(time.time()))),
    "nbf a numeric string": "Bearer " + signed(nbf=str(int(time.time()))),
    "sub a list": "Bearer " + signed(sub=["carol"]),
    "sub too long": "Bearer " + signed(sub="c" * (MAX_SUBJECT + 1)),
    "another audience": "Bearer " + signed(aud="another-service"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_HEADERS))
def test_verifier_refuses(name: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        VERIFIER.verify(REFUSED_HEADERS[name])
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert ("www-authenticate", 'Bearer realm="meshdemo"') in caught.value.trailing_metadata


def test_verifier_accepts_a_minted_token() -> None:
    token = mint_token(SECRET, "erin", ["admin", "user"], 60)
    assert VERIFIER.verify(f"Bearer {token}") == Principal("erin", frozenset({"admin", "user"}))
    # The scheme is case-insensitive; surrounding blanks are ignored.
    assert VERIFIER.verify(f"  bearer   {token} ").sub == "erin"


def test_verifier_tolerates_small_clock_skew() -> None:
    token = mint_token(SECRET, "frank", [], -2)  # expired 2 s ago, leeway 5 s
    assert VERIFIER.verify(f"Bearer {token}") == Principal("frank", frozenset())
    strict = TokenVerifier(SECRET, leeway_s=0)
    with pytest.raises(Unauthenticated, match="expired"):
        strict.verify(f"Bearer {token}")


def test_mint_token_issue_time_seam() -> None:
    token = mint_token(SECRET, "gina", ["user"], 10, now=1_000_000.0)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == {"sub": "gina", "roles": ["user"], "iat": 1_000_000, "exp": 1_000_010}


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(secret)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_token(secret, "a", [], 60)


def test_repr_hides_the_secret() -> None:
    assert SECRET not in repr(VERIFIER)


def test_cached_tokens_still_expire() -> None:
    clock = FakeClock(time.time())
    verifier = TokenVerifier(SECRET, clock=clock)
    header = "Bearer " + mint_token(SECRET, "hal", ["user"], 60, now=clock.now)
    assert verifier.verify(header).sub == "hal"
    assert verifier.verify(header).sub == "hal"  # from the cache
    assert "cached=1/" in repr(verifier)
    clock.now += 60 + 4  # within the 5 s leeway
    assert verifier.verify(header).sub == "hal"
    clock.now += 2
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(header)
    assert "cached=0/" in repr(verifier)


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    clock = FakeClock(time.time())
    verifier = TokenVerifier(SECRET, cache_size=3, clock=clock)
    headers = [f"Bearer {mint_token(SECRET, f'u{n}', [], 60)}" for n in range(5)]
    for header in headers:
        verifier.verify(header)
    assert "cached=3/3" in repr(verifier)
    clock.now += 3600  # only the cache believes the tokens are expired
    for header in headers[2:]:
        with pytest.raises(Unauthenticated, match="expired"):
            verifier.verify(header)
    # Evicted, so verified again in full (by the real clock, still valid).
    assert verifier.verify(headers[0]).sub == "u0"


def test_cache_can_be_switched_off() -> None:
    verifier = TokenVerifier(SECRET, cache_size=0)
    header = "Bearer " + mint_token(SECRET, "ivy", [], 60)
    assert verifier.verify(header) == verifier.verify(header)
    assert "cached=0/0" in repr(verifier)


def test_refused_tokens_are_not_cached() -> None:
    verifier = TokenVerifier(SECRET)
    for header in REFUSED_HEADERS.values():
        with pytest.raises(Unauthenticated):
            verifier.verify(header)
    assert "cached=0/" in repr(verifier)


@given(header=st.one_of(st.none(), st.text(), st.text().map(lambda text: f"Bearer {text}")))
def test_any_random_header_is_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(header)


@given(
    sub=st.text(min_size=1, max_size=MAX_SUBJECT),
    roles=st.lists(st.text(), max_size=5),
    ttl=st.integers(min_value=10, max_value=10**6),
)
def test_minted_tokens_round_trip(sub: str, roles: list[str], ttl: int) -> None:
    token = mint_token(SECRET, sub, roles, ttl)
    assert VERIFIER.verify(f"Bearer {token}") == Principal(sub, frozenset(roles))


@pytest.mark.parametrize(
    ("method", "access"),
    [
        ("/meshdemo.v1.UserService/CreateUser", Access.ADMIN),
        ("/meshdemo.v1.UserService/BatchCreateUsers", Access.ADMIN),
        ("/meshdemo.v1.UserService/GetUser", Access.AUTHENTICATED),
        ("/meshdemo.v1.UserService/ListUsers", Access.AUTHENTICATED),
        ("/meshdemo.v1.UserService/Chat", Access.AUTHENTICATED),
        ("/meshdemo.v1.UserService/DeleteUser", Access.AUTHENTICATED),
        ("/grpc.health.v1.Health/Check", Access.EXEMPT),
        ("/grpc.health.v1.Health/Watch", Access.EXEMPT),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Access.EXEMPT),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Access.EXEMPT),
        ("/other.v1.Thing/Do", Access.AUTHENTICATED),
        ("/grpc.health.v1.HealthX/Check", Access.AUTHENTICATED),
        ("garbage", Access.AUTHENTICATED),
    ],
)
def test_access_policy(method: str, access: Access) -> None:
    assert access_for(method) is access


def test_authorize() -> None:
    admin = Principal("a", frozenset({"admin"}))
    reader = Principal("r", frozenset({"user", "moderator"}))
    authorize(admin, Access.ADMIN)
    authorize(reader, Access.AUTHENTICATED)
    with pytest.raises(PermissionDenied):
        authorize(reader, Access.ADMIN)


# On the wire.


@pytest.mark.parametrize("name", sorted(REFUSED_HEADERS))
async def test_refused_headers_get_unauthenticated(harness: Harness, name: str) -> None:
    header = REFUSED_HEADERS[name]
    metadata = () if header is None else (("authorization", header),)
    outcome = await call(harness.stub, UNARY, metadata=metadata)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED
    assert outcome.error is not None
    assert trailers(outcome.error)["www-authenticate"] == 'Bearer realm="meshdemo"'
    assert harness.servicer.seen.principals == []  # the handler never ran


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_needs_a_token(harness: Harness, kind: str) -> None:
    outcome = await call(harness.stub, kind, refused=True)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("kind", [UNARY, SERVER_STREAM, BIDI_STREAM])
async def test_reader_may_read(harness: Harness, kind: str) -> None:
    assert (await call(harness.stub, kind, metadata=reader_md())).code == grpc.StatusCode.OK
    assert harness.servicer.seen.principals[0] == Principal("bob", frozenset({"user"}))


async def test_reader_may_not_write(harness: Harness) -> None:
    for attempt in (
        harness.stub.CreateUser(user_pb2.CreateUserRequest(name="x"), metadata=reader_md()),
        harness.stub.BatchCreateUsers(iter([]), metadata=reader_md()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await attempt
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == "MISSING_ROLE"
        assert info.metadata["required_role"] == "admin"
    assert harness.servicer.seen.principals == []


async def test_admin_may_write(harness: Harness) -> None:
    reply = await harness.stub.CreateUser(
        user_pb2.CreateUserRequest(name="new"), metadata=admin_md("alice")
    )
    assert reply.user.name == "new"
    assert (await call(harness.stub, CLIENT_STREAM, metadata=admin_md())).code == grpc.StatusCode.OK
    assert harness.servicer.seen.principals == [
        Principal("alice", frozenset({"admin"})),
        Principal("alice", frozenset({"admin"})),
    ]


async def test_health_is_exempt(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_principals_never_leak_between_concurrent_calls(harness: Harness) -> None:
    subs = [f"user-{n}" for n in range(20)]

    async def whoami(sub: str) -> str:
        reply = await harness.stub.GetUser(
            user_pb2.GetUserRequest(id="me"), metadata=reader_md(sub), timeout=10
        )
        return reply.user.email

    assert await asyncio.gather(*(whoami(sub) for sub in subs)) == subs
    assert current_principal.get() is None  # nothing leaked into the test's own context


async def test_unknown_methods_fail_closed(log_capture: Any) -> None:
    async def answer(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(
        interceptors=build_server_interceptors(
            verifier=VERIFIER, metrics=None, tracer_provider=None, logger=log_capture[0]
        )
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "other.v1.Thing", {"Do": grpc.unary_unary_rpc_method_handler(answer)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            do = channel.unary_unary(
                "/other.v1.Thing/Do", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await do(b"hi", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await do(b"hi", metadata=reader_md(), timeout=5) == b"hi"
    finally:
        await server.stop(None)


async def test_auth_switched_off_trusts_everyone(
    exporter: Any, tracer_provider: Any, log_capture: Any
) -> None:
    from service.metrics import ServerMetrics

    chain = build_server_interceptors(
        verifier=None, metrics=None, tracer_provider=tracer_provider, logger=log_capture[0]
    )
    servicer = TestServicer()
    async with harness_for(
        chain, servicer=servicer, exporter=exporter, metrics=ServerMetrics(), log=log_capture
    ) as running:
        for kind in KINDS:
            assert (await call(running.stub, kind)).code == grpc.StatusCode.OK
    assert set(servicer.seen.principals) == {None}


PRINTABLE = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(header=st.one_of(PRINTABLE, PRINTABLE.map(lambda text: f"Bearer {text}")))
async def test_any_printable_header_is_unauthenticated_on_the_wire(
    harness: Harness, header: str
) -> None:
    outcome = await call(harness.stub, UNARY, metadata=(("authorization", header),), deadline=5)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("kind", KINDS)
async def test_two_authorization_headers_are_refused(harness: Harness, kind: str) -> None:
    # Both valid: still refused, since which one counts would be ambiguous.
    metadata = (*admin_md("first"), *reader_md("second"))
    outcome = await call(harness.stub, kind, metadata=metadata, refused=True)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED
    assert outcome.error is not None
    assert outcome.error.details() == "2 authorization headers; send exactly one bearer token"
    assert trailers(outcome.error)["www-authenticate"] == 'Bearer realm="meshdemo"'


async def test_malformed_claims_on_the_wire_are_never_internal(harness: Harness) -> None:
    header = REFUSED_HEADERS["exp a numeric string"]
    assert header is not None
    for _ in range(2):  # the second time too: nothing was cached
        outcome = await call(harness.stub, UNARY, metadata=(("authorization", header),))
        assert outcome.code == grpc.StatusCode.UNAUTHENTICATED
        assert outcome.error is not None
        assert outcome.error.details() == "invalid token: exp claim must be a number"
