"""The client library over TLS: tls= of UserClient, the name verified, rotation for new channels."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import (
    ChannelSecurity,
    TlsConfig,
    TlsCredentials,
    UnavailableError,
    UserClient,
    server_name_for,
)
from client._tls import add_tls_arguments, channel_security, tls_from_args, tls_from_env
from client.testing import DnsServer
from service.testing import admin_token
from tests.tls.helpers import SERVING, check, issue, serve_tls

NAME = "users.test.svc.cluster.local."


def _tls(certs: Path, *, client: bool = False, server_name: str = "") -> TlsConfig:
    return TlsConfig(
        ca_file=str(certs / "ca.crt"),
        cert_file=str(certs / "client.crt") if client else "",
        key_file=str(certs / "client.key") if client else "",
        server_name=server_name,
    )


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(zone="test.svc.cluster.local") as server:
        yield server


async def test_user_client_over_mutual_tls_on_a_static_target(certs_a: Path) -> None:
    async with serve_tls(certs_a, mutual=True) as server:
        tls = _tls(certs_a, client=True)
        target = f"static:///{server.address}"
        async with UserClient(target, token=admin_token(), tls=tls, tracing=False) as client:
            user = await client.create_user("Tia", "tia@example.com", 41)
            assert await client.get_user(user.id) == user


async def test_a_dns_target_verifies_the_name_it_dialled(
    certs_a: Path, dns_server: DnsServer
) -> None:
    # Endpoints are IPs from DNS; the certificate is checked against the DNS name.
    async with serve_tls(certs_a, host="127.0.0.5") as server:  # no IP name for .5
        dns_server.publish(NAME, ["127.0.0.5"])
        port = int(server.address.rsplit(":", 1)[1])
        target = dns_server.target(NAME, port)
        async with UserClient(
            target, token=admin_token(), tls=_tls(certs_a), tracing=False
        ) as client:
            user = await client.create_user("Ugo", "ugo@example.com", 52)
            assert await client.get_user(user.id) == user


async def test_a_server_name_override_that_the_certificate_lacks_fails(
    certs_a: Path, dns_server: DnsServer
) -> None:
    async with serve_tls(certs_a, host="127.0.0.2") as server:
        dns_server.publish(NAME, ["127.0.0.2"])
        port = int(server.address.rsplit(":", 1)[1])
        tls = _tls(certs_a, server_name="elsewhere.example.org")
        async with UserClient(
            dns_server.target(NAME, port),
            token=admin_token(),
            tls=tls,
            tracing=False,
            deadlines={"GetUser": 2.0},
        ) as client:
            with pytest.raises(UnavailableError):
                await client.get_user("u-1")


async def test_a_client_with_the_wrong_ca_gets_unavailable(certs_a: Path, certs_b: Path) -> None:
    async with serve_tls(certs_a) as server:
        async with UserClient(
            f"static:///{server.address}",
            token=admin_token(),
            tls=_tls(certs_b),
            tracing=False,
            deadlines={"GetUser": 2.0},
        ) as client:
            with pytest.raises(UnavailableError):
                await client.get_user("u-1")


async def test_new_channels_use_rotated_client_files(tmp_path: Path, certs_b: Path) -> None:
    live = issue(tmp_path / "live")
    clock = [0.0]
    creds = TlsCredentials(_tls(live), clock=lambda: clock[0])
    async with serve_tls(certs_b) as server:
        with pytest.raises(grpc.aio.AioRpcError):
            await check(server.address, creds.channel_credentials(), timeout=2.0)
        shutil.copyfile(certs_b / "ca.crt", live / ".new")
        os.replace(live / ".new", live / "ca.crt")
        assert creds.channel_credentials() is not None and creds.reloads == 0  # not looked yet
        clock[0] = 1.5
        fresh = creds.channel_credentials()
        assert creds.reloads == 1
        assert await check(server.address, fresh) == SERVING


def test_an_unreadable_replacement_keeps_the_client_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = issue(tmp_path / "live")
    clock = [0.0]
    creds = TlsCredentials(_tls(live, client=True), clock=lambda: clock[0])
    before = creds.channel_credentials()
    (live / "client.key").write_text("half")
    clock[0] = 2.0
    assert creds.channel_credentials() is before
    clock[0] = 4.0
    assert creds.channel_credentials() is before
    assert len([r for r in caplog.records if "cannot be used" in r.getMessage()]) == 1


def test_unreadable_files_at_start_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the CA file"):
        TlsCredentials(TlsConfig(ca_file=str(tmp_path / "none.crt")))
    (tmp_path / "junk.crt").write_text("junk")
    with pytest.raises(ValueError, match="not PEM"):
        TlsCredentials(TlsConfig(ca_file=str(tmp_path / "junk.crt")))


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="set together"):
        TlsConfig(cert_file="client.crt")


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("dns:///users.ns.svc.cluster.local:50051", "users.ns.svc.cluster.local"),
        ("dns://127.0.0.1:5353/users.mesh:50051", "users.mesh"),
        ("users.mesh:50051", "users.mesh"),
        ("k8s:///users.meshdemo:grpc", "users.meshdemo"),
        ("dns:///[::1]:50051", "::1"),
        ("static:///127.0.0.2:50051,127.0.0.3:50051", None),
    ],
)
def test_the_name_a_target_verifies(target: str, name: str | None) -> None:
    assert server_name_for(target) == name


def test_channel_security_chooses_what_the_pool_dials_with(certs_a: Path) -> None:
    assert channel_security("dns:///users:1") is None
    ready = grpc.ssl_channel_credentials()
    assert channel_security("dns:///users:1", credentials=ready) is ready
    security = channel_security("dns:///users.mesh:1", tls=_tls(certs_a))
    assert isinstance(security, ChannelSecurity)
    assert security.channel_options() == [("grpc.ssl_target_name_override", "users.mesh")]
    static = channel_security("static:///127.0.0.2:1", tls=_tls(certs_a))
    assert isinstance(static, ChannelSecurity) and static.channel_options() == []
    with pytest.raises(ValueError, match="not both"):
        channel_security("dns:///users:1", tls=_tls(certs_a), credentials=ready)


def test_flags_default_from_the_environment_and_win_over_it() -> None:
    env = {
        "MESH_TLS_CA_FILE": "/env/ca.crt",
        "MESH_TLS_CLIENT_CERT_FILE": "/env/c.crt",
        "MESH_TLS_CLIENT_KEY_FILE": "/env/c.key",
        "MESH_TLS_SERVER_NAME": "users.env",
    }
    parser = argparse.ArgumentParser()
    add_tls_arguments(parser, env)
    assert tls_from_args(parser.parse_args([])) == tls_from_env(env)
    args = parser.parse_args(["--tls-ca", "/flag/ca.crt", "--tls-server-name", "users.flag"])
    assert tls_from_args(args) == TlsConfig(
        "/flag/ca.crt", "/env/c.crt", "/env/c.key", "users.flag"
    )
    empty = argparse.ArgumentParser()
    add_tls_arguments(empty, {})
    assert tls_from_args(empty.parse_args([])) is None
    assert tls_from_env({}) is None


async def test_pooled_channels_move_to_rotated_files_at_the_next_sweep(
    tmp_path: Path, certs_b: Path
) -> None:
    """Mutual TLS with both sides' files switched to another CA: no call fails, no restart.

    A pooled channel would reconnect with its old credentials for its whole life (old client
    certificate, old CA: refused by the switched server); the sweep replaces it instead.
    """
    from client import Address, Endpoint
    from client.testing import eventually
    from tests.tls.test_rotation import _install, _until_connects

    server_files, client_files = issue(tmp_path / "server"), issue(tmp_path / "client")
    for name in ("ca.crt", "client.crt", "client.key"):  # the client starts with the server's CA
        shutil.copyfile(server_files / name, client_files / name)
    creds = TlsCredentials(_tls(client_files, client=True), check_interval=0.0)
    async with serve_tls(server_files, mutual=True) as server:
        host, port = server.address.rsplit(":", 1)
        endpoint = Endpoint(Address(host, int(port)), credentials=creds)
        endpoint.start()
        try:
            await eventually(lambda: endpoint.state.value == "SERVING")
            async with endpoint.lease() as before:
                assert await check_on(before.channel) == SERVING

            _install(certs_b, server_files)  # the server now proves, and requires, CA B
            for name in ("ca.crt", "client.crt", "client.key"):
                shutil.copyfile(certs_b / name, client_files / f".{name}")
                os.replace(client_files / f".{name}", client_files / name)
            b_creds = grpc.ssl_channel_credentials(
                (certs_b / "ca.crt").read_bytes(),
                (certs_b / "client.key").read_bytes(),
                (certs_b / "client.crt").read_bytes(),
            )
            await _until_connects(server.address, b_creds)

            await endpoint.prune()  # the pool's sweep: credentials changed, channels replaced
            assert creds.reloads == 1
            async with endpoint.lease() as after:
                assert after.channel is not before.channel
                assert await check_on(after.channel) == SERVING  # a new handshake, with B
            assert endpoint.state.value == "SERVING" and endpoint.channel_count == 1
            await asyncio.sleep(0.3)
            assert endpoint.state.value == "SERVING"  # the watch moved without a break
        finally:
            await endpoint.close()


async def check_on(channel: grpc.aio.Channel) -> int:
    """One health Check of the user service on ``channel``; its status."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.health import SERVICE_NAME

    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
    )
    return int(reply.status)
