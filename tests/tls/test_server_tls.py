"""Real TLS and mutual TLS servers on 127.0.0.x: what connects and what is refused, and why."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.testing import admin_token
from tests.tls.helpers import SERVING, check, credentials, serve_tls


async def test_tls_serves_a_client_that_trusts_the_ca(certs_a: Path) -> None:
    async with serve_tls(certs_a) as server:
        assert server.replica.tls is not None and not server.replica.tls.mutual
        assert await check(server.address, credentials(certs_a)) == SERVING
        async with grpc.aio.secure_channel(server.address, credentials(certs_a)) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetUser(
                    user_pb2.GetUserRequest(id="nobody"),
                    metadata=(("authorization", f"Bearer {admin_token()}"),),
                    timeout=5,
                )
        # The call reached the servicer over TLS: JWT auth ran and the user is unknown.
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_client_trusting_another_ca_fails_the_handshake(
    certs_a: Path, certs_b: Path
) -> None:
    async with serve_tls(certs_a) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, credentials(certs_b))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "handshake" in (info.value.details() or "").lower()
    assert "CERTIFICATE_VERIFY_FAILED" in (info.value.details() or "")


async def test_a_name_the_certificate_does_not_carry_fails(certs_a: Path) -> None:
    override = [("grpc.ssl_target_name_override", "other.test.svc.cluster.local")]
    async with serve_tls(certs_a) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, credentials(certs_a), override)
        # The same channel options with a name the certificate has verify.
        named = [("grpc.ssl_target_name_override", "users.test.svc.cluster.local")]
        assert await check(server.address, credentials(certs_a), named) == SERVING
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in (info.value.details() or "")


async def test_an_address_without_an_ip_name_fails(certs_a: Path) -> None:
    # The test set names 127.0.0.1 to .4 only.
    async with serve_tls(certs_a, host="127.0.0.5") as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, credentials(certs_a))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plain_text_client_gets_no_answer_from_a_tls_port(certs_a: Path) -> None:
    async with serve_tls(certs_a) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, None, timeout=2.0)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_mutual_tls_serves_a_client_with_a_certificate_of_the_ca(certs_a: Path) -> None:
    async with serve_tls(certs_a, mutual=True) as server:
        assert server.replica.tls is not None and server.replica.tls.mutual
        assert await check(server.address, credentials(certs_a, certs_a)) == SERVING


async def test_mutual_tls_refuses_a_client_without_a_certificate(certs_a: Path) -> None:
    async with serve_tls(certs_a, mutual=True) as server:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, credentials(certs_a))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_from_another_ca(
    certs_a: Path, certs_b: Path
) -> None:
    async with serve_tls(certs_a, mutual=True) as server:
        # Trusts the server's CA, but presents B's client certificate.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server.address, credentials(certs_a, certs_b))
        # A's own client certificate still gets in, on the same server.
        assert await check(server.address, credentials(certs_a, certs_a)) == SERVING
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_health_port_answers_in_plain_text_while_the_main_port_is_tls(
    certs_a: Path,
) -> None:
    async with serve_tls(certs_a, mutual=True, health_port=0) as server:
        health_port = server.replica.health_port
        assert health_port is not None and health_port > 0
        plain = f"127.0.0.2:{health_port}"
        assert await check(plain, None) == SERVING
        # Only health is served there: the user service is not.
        async with grpc.aio.insecure_channel(plain) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await user_pb2_grpc.UserServiceStub(channel).GetUser(
                    user_pb2.GetUserRequest(id="x"), timeout=5
                )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # It shares the replica's health: graceful shutdown shows there too.
        await server.health.enter_graceful_shutdown()
        assert await check(plain, None) != SERVING
    # Shutdown stopped the health port too.
    with pytest.raises(grpc.aio.AioRpcError):
        await check(plain, None, timeout=1.0)


async def test_the_health_port_is_off_by_default(certs_a: Path) -> None:
    async with serve_tls(certs_a) as server:
        assert server.replica.health_port is None
