"""Channel credentials reach every pooled channel: TLS to a real server on loopback.

The certificate is made for the test by the ``openssl`` command (a self-signed
one for IP 127.0.0.2, valid one day) and the server is a real grpc.aio server
with a TLS port.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from client import Address, Endpoint, EndpointSet, PoolConfig, StaticResolver
from client.testing import FakeReplica
from meshdemo.v1 import user_pb2
from tests.client.helpers import address

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

PLAIN = PoolConfig(health_check=False)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[bytes, bytes]:
    """(private key, certificate) in PEM for IP 127.0.0.2."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.2", "-addext", "subjectAltName=IP:127.0.0.2",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return key.read_bytes(), cert.read_bytes()


@contextlib.asynccontextmanager
async def tls_server(key: bytes, cert: bytes) -> AsyncIterator[str]:
    credentials = grpc.ssl_server_credentials([(key, cert)])
    async with FakeReplica("127.0.0.2", name="tls", credentials=credentials) as replica:
        yield replica.address


async def get(endpoint: Endpoint) -> user_pb2.GetUserResponse:
    async with endpoint.lease() as lease:
        return await lease.stub.GetUser(user_pb2.GetUserRequest(id="u-1"), timeout=5)


async def test_an_endpoint_with_credentials_speaks_tls(certificate: tuple[bytes, bytes]) -> None:
    key, cert = certificate
    async with tls_server(key, cert) as hostport:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        endpoint = Endpoint(address(hostport), pool=PLAIN, credentials=credentials)
        try:
            assert (await get(endpoint)).user.name == "tls"
        finally:
            await endpoint.close()


async def test_without_credentials_a_tls_server_is_unreachable(
    certificate: tuple[bytes, bytes],
) -> None:
    key, cert = certificate
    async with tls_server(key, cert) as hostport:
        endpoint = Endpoint(address(hostport), pool=PLAIN)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await get(endpoint)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await endpoint.close()


async def test_the_endpoint_set_passes_its_credentials_on(
    certificate: tuple[bytes, bytes],
) -> None:
    key, cert = certificate
    async with tls_server(key, cert) as hostport:
        resolver = StaticResolver(frozenset({address(hostport)}))
        endpoints = EndpointSet(
            resolver,
            pool=PLAIN,
            maintenance_interval=None,
            credentials=grpc.ssl_channel_credentials(root_certificates=cert),
        )
        try:
            endpoint = await endpoints.wait_pick(max_wait=5)
            assert (await get(endpoint)).user.name == "tls"
        finally:
            await endpoints.close()


def test_a_channel_factory_and_credentials_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Endpoint(
            Address("127.0.0.2", 1),
            channel_factory=lambda target, options, interceptors: grpc.aio.insecure_channel(target),
            credentials=grpc.ssl_channel_credentials(),
        )
