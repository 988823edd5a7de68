"""Forged and malformed bearer tokens against one real replica: all UNAUTHENTICATED.

Tokens are built by hand (header and claims as JSON, HMAC-signed here or not
at all), so every field can be wrong. The verifier passes no audience to
PyJWT, which then refuses any token that carries a non-empty ``aud``: a token
for another audience, or for this one, is UNAUTHENTICATED; that is what the
code decides (service/auth.py) and what these tests pin down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.auth import MAX_SUBJECT
from service.testing import TEST_SECRET
from tests.service.fuzz_support import (
    FUZZ,
    ThreadedReplica,
    assert_still_serving,
    code_of,
    running_replica,
)

OTHER_SECRET = "another-secret-of-enough-length-0123456789"
NOW = int(time.time())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _json(value: object) -> bytes:
    # allow_nan: a forger may send NaN or Infinity, which Python's json reads back.
    return json.dumps(value, allow_nan=True).encode()


def forge(
    claims: object,
    *,
    secret: str = TEST_SECRET,
    header: object = None,
    digest: Any = hashlib.sha256,
) -> str:
    """A compact JWT of ``claims`` (any JSON) under ``header``, HMAC-signed with ``secret``."""
    head = _b64(_json(header if header is not None else {"alg": "HS256", "typ": "JWT"}))
    signing_input = f"{head}.{_b64(_json(claims))}"
    mac = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(mac)}"


def valid_claims(**changes: object) -> dict[str, object]:
    """The claims of a valid reader token, with ``changes`` (None removes a claim)."""
    claims: dict[str, object] = {"sub": "fuzz", "roles": ["user"], "iat": NOW, "exp": NOW + 3600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def unsigned(claims: object, alg: str = "none") -> str:
    return f"{_b64(_json({'alg': alg, 'typ': 'JWT'}))}.{_b64(_json(claims))}."


@pytest.fixture(scope="module")
def replica() -> Iterator[ThreadedReplica]:
    yield from running_replica()


@pytest.fixture(scope="module")
def channel(replica: ThreadedReplica) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> user_pb2_grpc.UserServiceStub:
    return user_pb2_grpc.UserServiceStub(channel)


def _get(
    stub: user_pb2_grpc.UserServiceStub, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    request = user_pb2.GetUserRequest(id="01NOPE")
    return code_of(lambda: stub.GetUser(request, metadata=metadata, timeout=10))


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_the_forger_signs_like_the_service(stub: user_pb2_grpc.UserServiceStub) -> None:
    # The baseline: a hand-built valid token passes, so every refusal below
    # is about the one thing each case gets wrong.
    assert _get(stub, _bearer(forge(valid_claims()))) == grpc.StatusCode.NOT_FOUND


FORGED = {
    "alg none": unsigned(valid_claims()),
    "alg None": unsigned(valid_claims(), alg="None"),
    "alg none with a signature": forge(valid_claims(), header={"alg": "none"}),
    "wrong key": forge(valid_claims(), secret=OTHER_SECRET),
    "HS512 with the right key": forge(
        valid_claims(), header={"alg": "HS512", "typ": "JWT"}, digest=hashlib.sha512
    ),
    "HS256 declared, signed HS512": forge(valid_claims(), digest=hashlib.sha512),
    "RS256 declared": forge(valid_claims(), header={"alg": "RS256", "typ": "JWT"}),
    "no alg": forge(valid_claims(), header={"typ": "JWT"}),
    "header not an object": forge(valid_claims(), header=["HS256"]),
    "expired": forge(valid_claims(exp=NOW - 60)),
    "not yet valid": forge(valid_claims(nbf=NOW + 3600)),
    "missing sub": forge(valid_claims(sub=None)),
    "missing exp": forge(valid_claims(exp=None)),
    "missing roles": forge(valid_claims(roles=None)),
    "exp as string": forge(valid_claims(exp=str(NOW + 3600))),
    "exp as list": forge(valid_claims(exp=[NOW + 3600])),
    "exp as bool": forge(valid_claims(exp=True)),
    "exp as object": forge(valid_claims(exp={"at": NOW + 3600})),
    "exp NaN": forge(valid_claims(exp=float("nan"))),
    "exp infinite": forge(valid_claims(exp=float("inf"))),
    "exp beyond any float": forge(valid_claims(exp=10**400)),
    "nbf as string": forge(valid_claims(nbf="0")),
    "iat as list": forge(valid_claims(iat=[NOW])),
    "roles as string": forge(valid_claims(roles="admin")),
    "roles of numbers": forge(valid_claims(roles=[1, 2])),
    "sub as number": forge(valid_claims(sub=42)),
    "sub empty": forge(valid_claims(sub="")),
    "sub too long": forge(valid_claims(sub="s" * (MAX_SUBJECT + 1))),
    "another audience": forge(valid_claims(aud="someone-else")),
    "this audience": forge(valid_claims(aud="meshdemo")),
    "claims not an object": forge([1, 2, 3]),
    "claims a string": forge("admin"),
    "garbage base64": "!!!.@@@.###",
    "base64 but not JSON": f"{_b64(b'not json')}.{_b64(b'nor this')}.{_b64(b'sig')}",
    "two parts": f"{_b64(b'{}')}.{_b64(b'{}')}",
    "four parts": forge(valid_claims()) + ".extra",
    "signature cut": forge(valid_claims())[:-4],
}


@pytest.mark.parametrize("token", FORGED.values(), ids=FORGED.keys())
def test_forged_tokens_are_unauthenticated(stub: user_pb2_grpc.UserServiceStub, token: str) -> None:
    assert _get(stub, _bearer(token)) == grpc.StatusCode.UNAUTHENTICATED


HEADERS = {
    "empty": "",
    "scheme only": "Bearer",
    "scheme and spaces": "Bearer    ",
    "basic": "Basic dXNlcjpwYXNz",
    "token without scheme": forge(valid_claims()),
}


@pytest.mark.parametrize("value", HEADERS.values(), ids=HEADERS.keys())
def test_malformed_headers_are_unauthenticated(
    stub: user_pb2_grpc.UserServiceStub, value: str
) -> None:
    assert _get(stub, (("authorization", value),)) == grpc.StatusCode.UNAUTHENTICATED


def test_two_authorization_headers_are_refused(stub: user_pb2_grpc.UserServiceStub) -> None:
    good = forge(valid_claims())
    twice = (*_bearer(good), *_bearer(forge(valid_claims(sub="other"))))
    assert _get(stub, twice) == grpc.StatusCode.UNAUTHENTICATED
    assert _get(stub, (*_bearer(good), *_bearer(good))) == grpc.StatusCode.UNAUTHENTICATED
    # The same token alone still works: the refusal was about the count.
    assert _get(stub, _bearer(good)) == grpc.StatusCode.NOT_FOUND


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
CLAIM_VALUES = {
    "sub": st.one_of(st.text(max_size=300), JSON),
    "roles": st.one_of(st.lists(st.sampled_from(["user", "admin", "x"])), JSON),
    "exp": st.one_of(st.integers(NOW - 100, NOW + 10**6), st.integers(10**300, 10**400), JSON),
    "nbf": st.one_of(st.integers(), JSON),
    "iat": st.one_of(st.integers(), JSON),
    "aud": JSON,
}


@FUZZ
@given(claims=st.fixed_dictionaries({}, optional=CLAIM_VALUES))
def test_signed_arbitrary_claims_never_fault(
    stub: user_pb2_grpc.UserServiceStub, claims: dict[str, object]
) -> None:
    # Correctly signed, so only the claims decide: served or UNAUTHENTICATED.
    code = _get(stub, _bearer(forge(claims)))
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED), code


@FUZZ
@given(value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400))
def test_arbitrary_header_text_is_unauthenticated(
    stub: user_pb2_grpc.UserServiceStub, value: str
) -> None:
    assert _get(stub, (("authorization", value),)) == grpc.StatusCode.UNAUTHENTICATED


def test_zz_still_serving_after_the_forgeries(channel: grpc.Channel) -> None:
    assert_still_serving(channel)
