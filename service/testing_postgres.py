"""A throwaway PostgreSQL server of the caller's own, to stop and start at will.

Public (next to :mod:`service.testing`) so that the outage tests and the
reliability benchmark (``python -m bench.reliability``) start one the same
way. The shared server at ``MESH_TEST_POSTGRES_URL`` is never stopped; they
run this one instead: ``initdb`` into a fresh temporary directory, a free
loopback port, trust authentication on 127.0.0.1 only, its socket in its own
directory. When run as root, the server runs as the ``postgres`` system user
(PostgreSQL refuses to run as root). Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalPostgres", "local_postgres", "why_no_local_postgres"]


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _run_as() -> list[str] | None:
    """The command prefix that runs a program as a non-root user, or None if impossible."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return [runuser, "-u", "postgres", "--"] if runuser else None


def why_no_local_postgres() -> str | None:
    """Why no local server can be started here, or None if one can."""
    if _bindir() is None:
        return "no initdb found (PATH or /usr/lib/postgresql/*/bin)"
    if _run_as() is None:
        return "running as root without a 'postgres' user and runuser to start PostgreSQL"
    return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class LocalPostgres:
    """A server in ``home`` listening on 127.0.0.1:``port``."""

    bindir: Path
    home: Path
    port: int
    run_as: tuple[str, ...]

    @property
    def url(self) -> str:
        """Where the store connects: the stock ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off"
        )
        self._pg_ctl("start", "-w", "-t", "30", "-o", options, "-l", str(self.home / "log"))

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends sessions, ``immediate`` aborts)."""
        self._pg_ctl("stop", "-w", "-t", "30", "-m", mode)

    def _pg_ctl(self, *args: str) -> None:
        command = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.home / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=40)


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """Initialise a server (not started); remove it, stopped, on exit."""
    bindir, run_as = _bindir(), _run_as()
    if bindir is None or run_as is None:
        raise RuntimeError(why_no_local_postgres())
    home = Path(tempfile.mkdtemp(prefix="meshdemo-pg-"))
    try:
        if run_as:
            owner = pwd.getpwnam("postgres")
            os.chown(home, owner.pw_uid, owner.pw_gid)
        data = str(home / "data")
        initdb = [str(bindir / "initdb"), "-D", data, "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*run_as, *initdb, "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        server = LocalPostgres(bindir, home, _free_loopback_port(), tuple(run_as))
        try:
            yield server
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                server.stop("immediate")
    finally:
        shutil.rmtree(home, ignore_errors=True)
