"""Shared pieces of the TLS tests: certificate sets, credentials and one health call."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._certs import CertificateSet, write_certificates
from service.health import SERVICE_NAME
from service.testing import InProcessServer, serve

#: Names of every set the tests issue: the loopback addresses the tests bind and localhost.
TEST_SET = CertificateSet(
    dns_names=["localhost", "users.test.svc.cluster.local"],
    ips=["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
)


def issue(directory: Path) -> Path:
    """A fresh CA, server and client certificate in ``directory``."""
    write_certificates(directory, TEST_SET)
    return directory


def credentials(
    trust: Path, client: Path | None = None, *, with_cert: bool = True
) -> grpc.ChannelCredentials:
    """Credentials trusting ``trust``'s CA, presenting ``client``'s certificate (if any)."""
    if client is None or not with_cert:
        return grpc.ssl_channel_credentials((trust / "ca.crt").read_bytes())
    return grpc.ssl_channel_credentials(
        (trust / "ca.crt").read_bytes(),
        (client / "client.key").read_bytes(),
        (client / "client.crt").read_bytes(),
    )


async def check(
    address: str,
    creds: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]] | None = None,
    *,
    timeout: float = 5.0,
) -> int:
    """One grpc.health.v1 Check of the user service on a new channel; its status."""
    opened = (
        grpc.aio.insecure_channel(address, options=options)
        if creds is None
        else grpc.aio.secure_channel(address, creds, options=options)
    )
    async with opened as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout
        )
    return int(reply.status)


SERVING = int(health_pb2.HealthCheckResponse.SERVING)


@contextlib.asynccontextmanager
async def serve_tls(
    certs: Path, host: str = "127.0.0.2", *, mutual: bool = False, **overrides: Any
) -> AsyncIterator[InProcessServer]:
    """A replica serving TLS with ``certs``'s server certificate (mutual: its CA for clients)."""
    settings: dict[str, Any] = {
        "tls_cert_file": str(certs / "server.crt"),
        "tls_key_file": str(certs / "server.key"),
    }
    if mutual:
        settings["tls_client_ca_file"] = str(certs / "ca.crt")
    settings.update(overrides)
    async with serve(host, **settings) as server:
        yield server
