"""``python -m client certs`` and the client CLI's TLS flags against a real mutual-TLS replica."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from client.cli import main_async
from service.testing import admin_token
from tests.tls.helpers import serve_tls


async def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), env=env or {}, stdin=io.StringIO(), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _sans(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


async def test_certs_writes_a_ca_server_and_client_with_private_keys(tmp_path: Path) -> None:
    code, out, err = await _cli("certs", "--out", str(tmp_path / "certs"))
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert names == ["ca.crt", "ca.key", "client.crt", "client.key", "server.crt", "server.key"]
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((tmp_path / "certs" / key).stat().st_mode) == 0o600
    sans = _sans(tmp_path / "certs" / "server.crt")
    dns = sans.get_values_for_type(x509.DNSName)
    assert "*.meshdemo-users-headless.meshdemo.svc.cluster.local" in dns
    assert "meshdemo-users.meshdemo.svc" in dns
    assert "meshdemo-users.meshdemo.svc.cluster.local" in dns
    assert "users.meshdemo.svc.cluster.local" in dns and "localhost" in dns
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "127.0.0.9", "::1"} <= ips and "127.0.0.10" not in ips
    assert "server.key (0600)" in out


async def test_certs_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert (await _cli("certs", "--out", str(tmp_path)))[0] == 0
    before = (tmp_path / "ca.crt").read_bytes()
    code, _, err = await _cli("certs", "--out", str(tmp_path))
    assert code == 1 and "--force" in err
    assert (tmp_path / "ca.crt").read_bytes() == before
    assert (await _cli("certs", "--out", str(tmp_path), "--force"))[0] == 0
    assert (tmp_path / "ca.crt").read_bytes() != before


async def test_certs_takes_names_addresses_and_a_loopback_range(tmp_path: Path) -> None:
    code, _, err = await _cli(
        "certs", "--out", str(tmp_path), "--dns", "a.example", "--dns", "b.example",
        "--ip", "10.1.2.3", "--loopback", "3",
    )  # fmt: skip
    assert code == 0, err
    sans = _sans(tmp_path / "server.crt")
    assert sans.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert ips == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1", "10.1.2.3"]


async def test_certs_refuses_bad_options(tmp_path: Path) -> None:
    code, _, err = await _cli("certs", "--out", str(tmp_path), "--ip", "not-an-ip")
    assert code == 2 and "not-an-ip" in err
    code, _, err = await _cli("certs", "--out", str(tmp_path), "--days", "0")
    assert code == 2 and "--days" in err
    assert not os.listdir(tmp_path)


async def test_get_over_mutual_tls_with_flags_and_with_the_environment(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert (await _cli("certs", "--out", str(certs), "--loopback", "4"))[0] == 0
    async with serve_tls(certs, mutual=True) as server:
        target = f"static:///{server.address}"
        token = admin_token()
        flags = [
            "--tls-ca", str(certs / "ca.crt"),
            "--tls-cert", str(certs / "client.crt"),
            "--tls-key", str(certs / "client.key"),
        ]  # fmt: skip
        code, out, err = await _cli("get", "nobody", "--target", target, "--token", token, *flags)
        assert code != 0 and "NOT_FOUND" in out + err  # reached the servicer over mTLS
        env = {
            "MESH_TARGET": target,
            "MESH_TOKEN": token,
            "MESH_TLS_CA_FILE": str(certs / "ca.crt"),
            "MESH_TLS_CLIENT_CERT_FILE": str(certs / "client.crt"),
            "MESH_TLS_CLIENT_KEY_FILE": str(certs / "client.key"),
        }
        code, out, err = await _cli("get", "nobody", env=env)
        assert "NOT_FOUND" in out + err
        # Without the client certificate the replica refuses the connection.
        code, out, err = await _cli(
            "get", "nobody", "--target", target, "--token", token, "--timeout", "2",
            "--tls-ca", str(certs / "ca.crt"),
        )  # fmt: skip
        assert "UNAVAILABLE" in out + err


async def test_a_missing_tls_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await _cli(
        "get", "x", "--target", "static:///127.0.0.2:1", "--tls-ca", str(tmp_path / "no.crt")
    )
    assert code == 2 and "no.crt" in err


def test_help_lists_the_tls_flags_and_their_variables() -> None:
    text = subprocess.run(
        [sys.executable, "-m", "client", "get", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for flag, variable in [
        ("--tls-ca", "MESH_TLS_CA_FILE"),
        ("--tls-cert", "MESH_TLS_CLIENT_CERT_FILE"),
        ("--tls-key", "MESH_TLS_CLIENT_KEY_FILE"),
        ("--tls-server-name", "MESH_TLS_SERVER_NAME"),
    ]:
        assert flag in text and variable in text


async def test_force_tightens_a_key_left_readable(tmp_path: Path) -> None:
    assert (await _cli("certs", "--out", str(tmp_path)))[0] == 0
    (tmp_path / "server.key").chmod(0o644)
    assert (await _cli("certs", "--out", str(tmp_path), "--force"))[0] == 0
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600
