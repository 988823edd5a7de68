"""Start-up with unusable TLS files, or a health port that cannot be bound: one clear line."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import StartupError
from service.testing import TEST_SECRET
from tests.tls.helpers import serve_tls

ERROR_LINE = re.compile(r"^error: [^\n;]+(; [^\n]+)$")


@pytest.mark.parametrize(
    ("broken", "content", "problem"),
    [
        ("server.crt", None, "No such file"),
        ("server.key", None, "No such file"),
        ("ca.crt", None, "No such file"),
        ("server.crt", b"garbage", "not a PEM certificate"),
        (
            "server.key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
            "not an unencrypted PEM private key",
        ),
        ("ca.crt", b"", "empty"),
    ],
)
async def test_an_unusable_file_stops_start_up_naming_it(
    tmp_path: Path, certs_a: Path, broken: str, content: bytes | None, problem: str
) -> None:
    live = tmp_path / "live"
    shutil.copytree(certs_a, live)
    if content is None:
        (live / broken).unlink()
    else:
        (live / broken).write_bytes(content)
    with pytest.raises(StartupError) as info:
        async with serve_tls(live, mutual=True):
            pass
    assert str(live / broken) in info.value.what
    assert problem in info.value.what
    assert ERROR_LINE.match(info.value.line())


async def test_a_key_that_is_not_the_certificates_stops_start_up(
    tmp_path: Path, certs_a: Path, certs_b: Path
) -> None:
    live = tmp_path / "live"
    shutil.copytree(certs_a, live)
    shutil.copyfile(certs_b / "server.key", live / "server.key")
    with pytest.raises(StartupError, match="does not belong to the certificate"):
        async with serve_tls(live):
            pass


async def test_a_health_port_in_use_stops_start_up_naming_the_flag(certs_a: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.2", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StartupError) as info:
            async with serve_tls(certs_a, health_port=port):
                pass
    assert f"127.0.0.2:{port}" in info.value.what
    assert "--health-port" in info.value.fix


def test_the_process_prints_one_line_and_exits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(
        {
            "MESH_AUTH_SECRET": TEST_SECRET,
            "MESH_METRICS_PORT": "-1",
            "MESH_STORE": f"sqlite:///{tmp_path / 'users.db'}",
            "MESH_TLS_CERT_FILE": str(tmp_path / "missing.crt"),
            "MESH_TLS_KEY_FILE": str(tmp_path / "missing.key"),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "--host", "127.0.0.2", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ERROR_LINE.match(lines[0])
    assert str(tmp_path / "missing.crt") in lines[0]
    assert "MESH_TLS_CERT_FILE" in lines[0]
    assert not (tmp_path / "users.db").exists()  # nothing was opened
