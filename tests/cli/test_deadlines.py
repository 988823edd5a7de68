"""--timeout bounds every command: against a replica that accepts TCP and never speaks,
a DNS server that never answers, and in the deadline's own terms."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from client.cli import COMMANDS, EXIT_OK, EXIT_RPC, EXIT_UNAVAILABLE, build_parser, main_async
from client.cli._common import SETUP_GRACE_S, CommandDeadline, Deadline
from tests.cli.conftest import Cli, Result

HOST = "127.0.0.7"
#: What a loaded machine may add to a bound: scheduling, the client closing its channels.
SLACK = 2.0
#: Python start-up and imports on top of that, for the runs as processes.
PROCESS_SLACK = 8.0
BATCH_LINE = '{"name": "A", "email": "a@example.com", "age": 1}\n'


class _SilentListener:
    """Accepts TCP connections on HOST and never sends a byte (a thread polls ``accept``)."""

    def __init__(self) -> None:
        self._socket = socket.create_server((HOST, 0))
        self._socket.settimeout(0.05)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self._socket.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._held.append(self._socket.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for held in self._held:
            held.close()
        self._socket.close()


@pytest.fixture
def silent() -> Iterator[str]:
    """``host:port`` of a listener that accepts connections and never sends a byte."""
    listener = _SilentListener()
    try:
        yield listener.address
    finally:
        listener.close()


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """``host:port`` of a UDP socket that takes DNS queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((HOST, 0))
        yield f"{HOST}:{sink.getsockname()[1]}"


def _budget(argv: list[str]) -> float:
    args = build_parser({}).parse_args(argv)
    bound = COMMANDS[args.command].budget(args)
    assert bound is not None
    return bound


async def _timed(argv: list[str], stdin: str = "") -> tuple[Result, float]:
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = await asyncio.wait_for(
        main_async(argv, env={}, stdin=io.StringIO(stdin), stdout=out, stderr=err), 60
    )
    return Result(code, out.getvalue(), err.getvalue()), time.monotonic() - started


#: Every command that talks to the replicas, with its input.
CASES = [
    (["get", "u1"], ""),
    (["create", "--name", "A", "--email", "a@example.com", "--age", "1"], ""),
    (["list"], ""),
    (["list", "--all"], ""),
    (["batch", "-"], BATCH_LINE),
    (["chat"], "hello\n"),
    (["stats", "--wait", "0.5"], ""),
    (["load", "--duration", "1", "--rps", "20", "--mix", "get=1", "--seed-users", "0"], ""),
    (["load", "--duration", "1"], ""),  # seeding first
]


@pytest.mark.parametrize(("argv", "stdin"), CASES, ids=lambda v: " ".join(v) if v else "")
async def test_a_replica_that_never_answers_ends_every_command_in_time(
    silent: str, argv: list[str], stdin: str
) -> None:
    full = [*argv, "--target", f"static:///{silent}", "--timeout", "1", "--json"]
    bound = _budget(full)
    result, took = await _timed(full, stdin)
    assert result.code == EXIT_UNAVAILABLE, result.err
    assert took <= bound + SLACK, (took, bound)
    _assert_reported(argv, result)


def _assert_reported(argv: list[str], result: Result) -> None:
    """One error line at the end; a load run that got going reports in its summary instead."""
    if argv[0] == "load" and result.out:
        summary = json.loads(result.out)
        assert (summary["ok"], summary["failed"]) == (0, summary["calls"])
        return
    last = result.err.strip().splitlines()[-1]
    assert last.startswith(("error: DEADLINE_EXCEEDED: ", "error: UNAVAILABLE: ")), result.err


@pytest.mark.parametrize(("argv", "stdin"), [CASES[0], CASES[3], CASES[5], CASES[7]])
async def test_a_dns_server_that_never_answers_ends_the_command_in_time(
    silent_dns: str, argv: list[str], stdin: str
) -> None:
    target = f"dns://{silent_dns}/users.test:50051"
    full = [*argv, "--target", target, "--timeout", "1", "--json"]
    result, took = await _timed(full, stdin)
    assert result.code == EXIT_UNAVAILABLE, result.err
    assert took <= _budget(full) + SLACK
    _assert_reported(argv, result)


def test_budgets_follow_the_timeout() -> None:
    assert _budget(["get", "x", "--timeout", "2"]) == 2 + SETUP_GRACE_S
    assert _budget(["stats", "--wait", "1", "--timeout", "2"]) == 1 + 2 + SETUP_GRACE_S
    # Seeding (one batch of 10 users), the duration, the drain (--timeout + 1).
    assert _budget(["load", "--duration", "3", "--timeout", "2"]) == 2 + 3 + 3 + SETUP_GRACE_S
    assert _budget(["load", "--duration", "3", "--seed-users", "0", "--drain-timeout", "0"]) == (
        3 + SETUP_GRACE_S
    )
    chaos = ["chaos", "--namespace", "demo", "--selector", "app=x", "--timeout", "1"]
    # Per round: two API calls, each tried once: --timeout to connect, --timeout to answer.
    assert _budget([*chaos, "--count", "2", "--interval", "5"]) == 2 * 4 + 5
    assert _budget([*chaos, "--count", "0", "--duration", "10"]) == 10 + 4
    assert COMMANDS["token"].budget(build_parser({}).parse_args(["token"])) is None


async def _process(*argv: str, limit: float) -> tuple[Result, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "MESH_TOKEN": ""},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode()), time.monotonic() - started


@pytest.mark.slow
async def test_the_process_ends_in_time_too(silent: str) -> None:
    argv = ["get", "u1", "--target", f"static:///{silent}", "--timeout", "1"]
    result, took = await _process(*argv, limit=60)
    assert result.code == EXIT_UNAVAILABLE
    assert took <= _budget(argv) + PROCESS_SLACK
    assert len(result.err.strip().splitlines()) == 1, result.err


@pytest.mark.slow
async def test_chaos_against_an_api_server_that_never_answers_ends_in_time(silent: str) -> None:
    argv = [
        "chaos", "--namespace", "demo", "--selector", "app=x", "--server", f"http://{silent}",
        "--timeout", "0.5",
    ]  # fmt: skip
    result, took = await _process(*argv, limit=60)
    assert result.code in (EXIT_RPC, EXIT_UNAVAILABLE), result.err  # a failed round, or the bound
    assert took <= _budget(argv) + PROCESS_SLACK
    assert result.err.strip().splitlines()[-1].startswith("error: ")


# --- an interactive chat is bounded by its waits, not by the time spent typing -----------


class _SlowTyping(io.TextIOBase):
    """Stdin that gives one line, then another ``pause`` seconds later, then ends."""

    def __init__(self, pause: float) -> None:
        self._lines = iter(["first\n", "second\n"])
        self._pause = pause
        self._started = False

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        for line in self._lines:
            if self._started:
                time.sleep(self._pause)  # in the reader thread
            self._started = True
            yield line


async def test_chat_does_not_count_the_time_spent_typing(cli: Cli) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(
        ["chat", "--timeout", "0.5"],
        env=cli.env,
        stdin=_SlowTyping(pause=1.5),  # type: ignore[arg-type]
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_OK, err.getvalue()
    assert [line.rsplit("] ", 1)[1] for line in out.getvalue().splitlines()] == ["first", "second"]


# --- the deadline itself --------------------------------------------------------------------


async def test_the_deadline_fires_as_command_deadline() -> None:
    deadline = Deadline(0.05, "get")
    with pytest.raises(CommandDeadline, match=r"^DEADLINE_EXCEEDED: get ran past its 0.05 s"):
        async with deadline.bound():
            await asyncio.sleep(5)
    assert deadline.expired


async def test_renew_moves_it_and_pause_suspends_it() -> None:
    deadline = Deadline(0.1, "chat")
    async with deadline.bound():
        for _ in range(3):
            await asyncio.sleep(0.06)
            deadline.renew()  # 0.18 s in all, never 0.1 s without a renewal
        deadline.pause()
        await asyncio.sleep(0.15)
    assert not deadline.expired


async def test_a_body_that_swallows_the_cancellation_still_ends_past_its_deadline() -> None:
    deadline = Deadline(0.05, "load")
    with pytest.raises(CommandDeadline):
        async with deadline.bound():
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()  # as load does, to print its summary


async def test_a_timeout_error_of_the_body_is_not_the_deadline() -> None:
    with pytest.raises(TimeoutError):
        async with Deadline(5, "get").bound():
            raise TimeoutError("from somewhere else")
