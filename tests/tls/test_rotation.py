"""Certificate files re-read on change: new connections get the new pair, no restart.

The server looks at its files at most once a second, on a handshake; the
tests poll with new connections (bounded) instead of sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import grpc
import pytest

from service.tls import CertificateFiles, TlsFileError
from tests.tls.helpers import SERVING, check, credentials, issue, serve_tls

#: Bound on how long a change may take to be served (the check interval is 1 s).
PICKUP_S = 10.0


def _install(source: Path, target: Path) -> None:
    """Replace target's server pair and CA with source's, each file swapped atomically."""
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copyfile(source / name, target / f".{name}.new")
        os.replace(target / f".{name}.new", target / name)


async def _until_connects(address: str, creds: grpc.ChannelCredentials) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PICKUP_S
    while True:
        try:
            assert await check(address, creds, timeout=2.0) == SERVING
            return
        except grpc.aio.AioRpcError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_new_pair_on_disk_reaches_new_connections(tmp_path: Path, certs_b: Path) -> None:
    live = issue(tmp_path / "live")
    first = tmp_path / "first-ca.crt"
    shutil.copyfile(live / "ca.crt", first)
    async with serve_tls(live) as server:
        assert await check(server.address, credentials(live)) == SERVING
        old_ca = credentials(live)
        _install(certs_b, live)
        await _until_connects(server.address, credentials(certs_b))
        # A client that trusts only the first CA is now refused on new connections.
        with pytest.raises(grpc.aio.AioRpcError):
            await check(server.address, old_ca)
        assert server.replica.tls is not None and server.replica.tls.reloads == 1


async def test_mutual_tls_takes_up_a_new_client_ca(tmp_path: Path, certs_b: Path) -> None:
    live = issue(tmp_path / "live")
    async with serve_tls(live, mutual=True) as server:
        assert await check(server.address, credentials(live, live)) == SERVING
        _install(certs_b, live)
        await _until_connects(server.address, credentials(certs_b, certs_b))


async def test_a_broken_replacement_keeps_the_old_pair(
    tmp_path: Path, certs_b: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = issue(tmp_path / "live")
    trust = credentials(live)
    async with serve_tls(live) as server:
        assert server.replica.tls is not None
        (live / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nhalf writ")
        with caplog.at_level(logging.WARNING, logger="meshdemo.tls"):
            # Several handshakes over more than one check interval: all on the old pair.
            for _ in range(6):
                assert await check(server.address, trust) == SERVING
                await asyncio.sleep(0.3)
        warnings = [r for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(warnings) == 1
        assert server.replica.tls.reloads == 0
        # Once a good pair lands it is served.
        _install(certs_b, live)
        await _until_connects(server.address, credentials(certs_b))


# --- CertificateFiles on its own, with a clock of the test's ----------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _files(directory: Path, clock: _Clock, ca: bool = False) -> CertificateFiles:
    return CertificateFiles(
        str(directory / "server.crt"),
        str(directory / "server.key"),
        str(directory / "ca.crt") if ca else "",
        clock=clock,
    )


def test_the_files_are_looked_at_at_most_once_per_interval(tmp_path: Path, certs_b: Path) -> None:
    live, clock = issue(tmp_path / "live"), _Clock()
    files = _files(live, clock)
    assert files.fetch() is None  # nothing changed
    _install(certs_b, live)
    clock.now += 0.5
    assert files.fetch() is None  # changed, but not looked at yet
    clock.now += 0.6
    assert files.fetch() is not None
    assert files.fetch() is None  # taken up once
    assert files.reloads == 1


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, certs_b: Path) -> None:
    live, clock = issue(tmp_path / "live"), _Clock()
    files = _files(live, clock)
    shutil.copyfile(certs_b / "server.key", live / "server.key")
    clock.now += 2
    assert files.fetch() is None
    with pytest.raises(TlsFileError, match="does not belong"):
        _files(live, clock)


def test_a_missing_file_keeps_the_old_pair_and_a_restored_one_is_fine(tmp_path: Path) -> None:
    live, clock = issue(tmp_path / "live"), _Clock()
    files = _files(live, clock, ca=True)
    served = files.configuration
    (live / "ca.crt").unlink()
    clock.now += 2
    assert files.fetch() is None
    assert files.configuration is served
    assert "reloads=0" in repr(files)


def test_a_fetcher_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live, clock = issue(tmp_path / "live"), _Clock()
    files = _files(live, clock)

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(files._files, "refresh", broken)
    assert files.fetch() is None
