"""mint_token: HS256 JWTs the service accepts."""

from __future__ import annotations

import jwt
import pytest

from client import UserClient, mint_token
from service.testing import TEST_SECRET, InProcessServer
from tests.client.conftest import static_target

SECRET = "a-test-secret-of-at-least-32-bytes"


def test_the_token_carries_sub_roles_and_expiry() -> None:
    token = mint_token(SECRET, sub="ann", roles=("user", "moderator"), ttl_s=60, clock=lambda: 1e9)
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "require": ["exp", "sub"]},
    )
    assert claims == {"sub": "ann", "roles": ["user", "moderator"], "iat": 10**9, "exp": 10**9 + 60}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": ""}, "secret"),
        ({"secret": "s", "sub": ""}, "sub"),
        ({"secret": "s", "ttl_s": 0}, "ttl_s"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint_token(**kwargs)  # type: ignore[arg-type]


async def test_the_service_accepts_it_and_refuses_other_secrets(
    replicas: list[InProcessServer],
) -> None:
    from client import PermissionDeniedError, UnauthenticatedError

    target = static_target(replicas)
    async with UserClient(target, token=mint_token(TEST_SECRET), tracing=False) as c:
        created = await c.create_user("Tok", "tok@example.com", 30)
    reader = mint_token(TEST_SECRET, roles=("user",))
    async with UserClient(target, token=reader, tracing=False) as c:
        assert (await c.get_user(created.id)).id == created.id
        with pytest.raises(PermissionDeniedError):
            await c.create_user("No", "no@example.com", 30)
    async with UserClient(
        target, token=mint_token("another-secret-also-at-least-32-bytes"), tracing=False
    ) as c:
        with pytest.raises(UnauthenticatedError):
            await c.get_user(created.id)
    expired = mint_token(TEST_SECRET, ttl_s=1, clock=lambda: 1000.0)
    async with UserClient(target, token=expired, tracing=False) as c:
        with pytest.raises(UnauthenticatedError):
            await c.get_user(created.id)
