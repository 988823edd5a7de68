"""Start-up failures of real ``python -m service`` processes, and teardown order.

Every failure is one line on stderr, ``error: <what is wrong>; <how to fix
it>``, no traceback, and the process exits at once: 2 for a setting, 1 for
the environment. Nothing here connects anywhere: ports are held by sockets
bound on 127.0.0.1, and 192.0.2.1 (TEST-NET-1, documentation only) is only
ever a *bind* target, which sends no packet.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.testing import eventually
from service.config import ConfigError, ServiceConfig, StartupError
from service.server import Teardown, start_replica, store_location
from service.testing import TEST_SECRET, serve

#: ``error: <what>; <fix>`` on one line.
ERROR_LINE = re.compile(r"^error: [^\n;]+(; [^\n]+)$")
#: A process that fails at start must not linger (the old bind failure stayed up).
PROMPT_S = 15.0


def _service(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``python -m service`` to its end; exit code, stderr and seconds taken."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    full_env.update({"MESH_AUTH_SECRET": TEST_SECRET, "MESH_METRICS_PORT": "-1"})
    full_env.update(env or {})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=PROMPT_S,
        check=False,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'users.db'}"


def test_a_port_in_use_exits_at_once_naming_it(taken_port: int, store: str) -> None:
    code, stderr, seconds = _service("--port", str(taken_port), "--store", store)
    line = _one_error_line(stderr)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{taken_port}: port {taken_port} is already in use" in line
    assert "MESH_PORT" in line
    assert seconds < PROMPT_S


def test_an_address_not_on_this_machine_exits(store: str) -> None:
    code, stderr, _ = _service("--host", "192.0.2.1", "--port", "0", "--store", store)
    line = _one_error_line(stderr)
    assert code == 1
    assert "cannot listen on 192.0.2.1:0: the address is not on this machine" in line
    assert "MESH_HOST" in line


def test_a_metrics_port_clash_is_named(taken_port: int, store: str) -> None:
    code, stderr, _ = _service(
        "--port", "0", "--store", store, env={"MESH_METRICS_PORT": str(taken_port)}
    )
    line = _one_error_line(stderr)
    assert code == 1
    assert f"cannot serve metrics on 127.0.0.1:{taken_port}" in line
    assert "MESH_METRICS_PORT" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://db/users", "must be sqlite:///FILE or postgresql://"),
        ("sqlite:///", "must be sqlite:///FILE"),
        ("sqlite:///users.db?journal=off", "unknown SQLite URL option(s) ['journal']"),
        ("postgresql://ada:hunter2@127.0.0.1:notaport/users", "port must be a number"),
        ("postgresql://ada:hunter2@127.0.0.1:5432/users?pool_min=many", "bad PostgreSQL"),
    ],
)
def test_a_bad_store_url_is_a_setting_error(url: str, says: str) -> None:
    code, stderr, _ = _service("--port", "0", "--store", url)
    line = _one_error_line(stderr)
    assert code == 2
    assert "--store / MESH_STORE" in line and says in line
    assert "hunter2" not in stderr


def test_a_sqlite_store_in_a_missing_directory_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "users.db"
    code, stderr, _ = _service("--port", "0", "--store", f"sqlite:///{path}")
    line = _one_error_line(stderr)
    assert code == 1
    assert f"cannot open the SQLite store {path}: directory {path.parent} does not exist" in line


def test_a_sqlite_store_that_is_a_directory_or_not_a_database(tmp_path: Path) -> None:
    code, stderr, _ = _service("--port", "0", "--store", f"sqlite:///{tmp_path}")
    assert code == 1 and f"{tmp_path}: it is a directory" in _one_error_line(stderr)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all")
    code, stderr, _ = _service("--port", "0", "--store", f"sqlite:///{junk}")
    assert code == 1 and f"{junk}: not a SQLite database" in _one_error_line(stderr)


def test_a_sqlite_store_under_a_file_or_behind_a_symlink_loop(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    code, stderr, _ = _service("--port", "0", "--store", f"sqlite:///{plain / 'users.db'}")
    assert code == 1 and f"directory {plain} is not a directory" in _one_error_line(stderr)
    loop = tmp_path / "loop.db"
    loop.symlink_to(loop)
    code, stderr, _ = _service("--port", "0", "--store", f"sqlite:///{loop}")
    line = _one_error_line(stderr)
    assert code == 1
    assert f"cannot open the SQLite store {loop}: Too many levels of symbolic links" in line


def test_a_missing_or_short_secret(store: str, tmp_path: Path) -> None:
    code, stderr, _ = _service("--port", "0", "--store", store, env={"MESH_AUTH_SECRET": ""})
    line = _one_error_line(stderr)
    assert code == 2 and line.startswith("error: no JWT secret; set MESH_AUTH_SECRET")
    code, stderr, _ = _service("--port", "0", "--store", store, env={"MESH_AUTH_SECRET": "short"})
    line = _one_error_line(stderr)
    assert code == 2
    assert "from MESH_AUTH_SECRET is 5 bytes, HS256 needs at least 32" in line
    assert "=short" not in line and "'short'" not in line
    missing = tmp_path / "absent-secret"
    code, stderr, _ = _service(
        "--port",
        "0",
        "--store",
        store,
        env={"MESH_AUTH_SECRET": "", "MESH_AUTH_SECRET_FILE": str(missing)},
    )
    assert code == 2 and f"cannot read MESH_AUTH_SECRET_FILE {missing}" in _one_error_line(stderr)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--port", "eighty"], {}, "argument --port: invalid int value: 'eighty'"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        ([], {"MESH_PORT": "eighty"}, "MESH_PORT='eighty' is not an integer"),
        (["--port", "70000"], {}, "--port / MESH_PORT: must be a port number"),
    ],
)
def test_bad_settings_are_one_line_too(args: list[str], env: dict[str, str], says: str) -> None:
    code, stderr, _ = _service(*args, env=env)
    line = _one_error_line(stderr)
    assert code == 2
    assert says in line and line.endswith("; see python -m service --help")


def test_help_says_how_to_set_the_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        capture_output=True,
        text=True,
        timeout=PROMPT_S,
        check=False,
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "MESH_AUTH_SECRET holds the HS256 secret" in text
    assert "export MESH_AUTH_SECRET=" in text
    assert "--auth-secret " not in text  # still no flag


def test_store_location_never_shows_a_password() -> None:
    assert store_location("postgresql://ada:hunter2@db.local:6543/users") == "db.local:6543/users"
    assert store_location("postgres://ada@db.local/users") == "db.local:5432/users"
    assert store_location("sqlite:////var/lib/users.db?busy_timeout_ms=5") == "/var/lib/users.db"
    assert store_location("postgresql://ada:hunter2@[::1]:6543/users") == "[::1]:6543/users"


# Teardown.


async def test_teardown_runs_every_step_in_reverse_even_when_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    teardown = Teardown()

    async def close_store() -> None:
        ran.append("store")

    def stop_metrics() -> None:
        ran.append("metrics")
        raise OSError("metrics server already gone")

    teardown.push("store", close_store)
    teardown.push("metrics", stop_metrics)
    teardown.push("health", lambda: ran.append("health"))
    with caplog.at_level(logging.ERROR, logger="meshdemo.server"):
        assert await teardown.run() is False
    assert ran == ["health", "metrics", "store"]
    [record] = caplog.records
    assert record.getMessage() == "teardown step failed"
    assert record.__dict__["step"] == "metrics"
    # Every step runs once: a second run does nothing.
    assert await teardown.run() is True
    assert ran == ["health", "metrics", "store"]


async def test_shutdown_goes_on_past_a_failing_step(caplog: pytest.LogCaptureFixture) -> None:
    async with serve("127.0.0.1", metrics_port=0) as server:
        replica = server.replica
        metrics_port = replica.metrics_port
        assert metrics_port
        # Runs first (pushed last) and fails; the metrics endpoint and the
        # store are still stopped after it.
        replica._teardown.push("failing step", _fail)
        with caplog.at_level(logging.ERROR, logger="meshdemo.server"):
            await replica.shutdown(drain_delay=0)
        assert "closed" in repr(replica.store)
        with socket.socket() as probe:
            # Free again: the metrics server let go of its port.
            probe.bind(("127.0.0.1", metrics_port))
    assert [r.__dict__.get("step") for r in caplog.records] == ["failing step"]


def _fail() -> None:
    raise RuntimeError("this step fails")


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if not t.daemon}


@pytest.mark.parametrize("clash", ["port", "metrics_port"])
async def test_a_failed_start_undoes_what_it_started(
    clash: str, taken_port: int, store: str
) -> None:
    before = _threads()
    settings = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "store": store,
        "auth_secret": TEST_SECRET,
        clash: taken_port,
    }
    with pytest.raises(StartupError) as caught:
        await start_replica(ServiceConfig(**settings))  # type: ignore[arg-type]
    assert not isinstance(caught.value, ConfigError)
    assert str(taken_port) in caught.value.what
    # The store's connection threads end: nothing keeps the process up. (aiosqlite resolves
    # close() from its worker thread just before that thread returns, so allow it a moment.)
    await eventually(lambda: _threads() <= before, within=2.0)


async def test_a_postgresql_store_that_does_not_answer_starts_not_serving_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not a start-up error: the replica waits, NOT_SERVING, for its database.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    url = f"postgresql://ada:hunter2@127.0.0.1:{port}/users?pool_timeout=0.5"
    with caplog.at_level(logging.WARNING, logger="meshdemo.server"):
        async with serve("127.0.0.1", store_url=url) as server:
            assert not server.health.serving
    [warning] = [r for r in caplog.records if r.getMessage().startswith("store not reachable")]
    assert warning.__dict__["store"] == f"127.0.0.1:{port}/users"
    assert "hunter2" not in str(warning.__dict__)
