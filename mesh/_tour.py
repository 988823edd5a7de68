"""``python -m mesh tour``: one real replica, every RPC, narrated.

Starts ``python -m service`` as a subprocess on 127.0.0.1 (port 0, a SQLite
store in a temporary directory, no metrics port, a random JWT secret made for
this run), mints an admin token with that secret, and walks a
:class:`~client.UserClient` through every RPC: an idempotent create, a get, a
NOT_FOUND, an INVALID_ARGUMENT with its field violations, a batch, a listing
resumed with its page token, a chat, the client's stats; then SIGTERMs the
replica and shows it exit 0. Whatever happens (Ctrl-C included), the process
is gone and the temporary directory removed when it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from client import (
    ROLES,
    InvalidArgumentError,
    MeshError,
    NewUserSpec,
    NotFoundError,
    UserClient,
    mint_token,
)
from meshdemo.v1 import user_pb2
from service.testing import ReplicaProcess

__all__ = ["Interrupted", "run_tour", "run_tour_command"]

_HOST = "127.0.0.1"
_ROLE_NAMES = {value: name for name, value in ROLES.items()}


def _describe(user: user_pb2.User) -> str:
    roles = ",".join(_ROLE_NAMES.get(r, str(r)) for r in user.roles)
    return f"[cyan]{user.id}[/] {user.name} <{user.email}> ({user.age}, {roles})"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the demo stops at the next step."""


class _Narrator:
    """Numbered steps on a console; a step refuses to start once interrupted."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interrupted = False
        self._step = 0

    def step(self, title: str) -> None:
        # Cancellation alone is not enough: a cancel that lands while a grpc.aio
        # call completes can be lost, so every step also checks the flag.
        if self.interrupted:
            raise Interrupted
        self._step += 1
        self.console.print(f"\n[bold]{self._step}. {title}[/]")

    def say(self, text: str) -> None:
        self.console.print(f"   {text}", highlight=False)


async def _create_twice(client: UserClient, say: _Narrator) -> user_pb2.User:
    say.step("CreateUser, then the same request_id again")
    request_id = uuid.uuid4().hex
    first = await client.create_user(
        "Ada Lovelace", "ada@example.com", 36, ("admin",), request_id=request_id
    )
    say.say(f"created   {_describe(first)}")
    again = await client.create_user(
        "Ada Lovelace", "ada@example.com", 36, ("admin",), request_id=request_id
    )
    say.say(f"replayed  {_describe(again)}")
    say.say(f"same user, nothing stored twice: [bold]{again.id == first.id}[/]")
    return first


async def _get(client: UserClient, say: _Narrator, user: user_pb2.User) -> None:
    say.step("GetUser")
    found = await client.get_user(user.id)
    say.say(f"found     {_describe(found)}")


async def _not_found(client: UserClient, say: _Narrator) -> None:
    say.step("GetUser for an id nobody has")
    try:
        await client.get_user("no-such-user")
    except NotFoundError as err:
        say.say(f"[yellow]{type(err).__name__}[/]: {err.code.name}: {err.message}")
    else:
        raise RuntimeError("expected NOT_FOUND")


async def _invalid(client: UserClient, say: _Narrator) -> None:
    say.step("CreateUser with invalid fields")
    try:
        await client.create_user("", "not-an-email", 200)
    except InvalidArgumentError as err:
        say.say(f"[yellow]{type(err).__name__}[/]: {err.code.name}")
        for violation in err.field_violations:
            say.say(f"  field [bold]{violation.field}[/]: {violation.description}")
    else:
        raise RuntimeError("expected INVALID_ARGUMENT")


async def _batch(client: UserClient, say: _Narrator) -> None:
    say.step("BatchCreateUsers: five users in one transaction (client stream)")
    names = ["Grace Hopper", "Alan Turing", "Barbara Liskov", "Edsger Dijkstra", "Frances Allen"]
    specs = [
        NewUserSpec(name, f"{name.split()[0].lower()}@example.com", 40 + n)
        for n, name in enumerate(names)
    ]
    for user in await client.batch_create_users(specs):
        say.say(f"created   {_describe(user)}")


async def _listing(client: UserClient, say: _Narrator) -> None:
    say.step("ListUsers: a page of 3, then resume with its page token (server stream)")
    listing = client.list_users(page_size=3)
    async for user in listing:
        say.say(f"page 1    {_describe(user)}")
    token = listing.next_page_token
    say.say(f"next page token: [magenta]{token}[/]")
    async for user in client.list_users(page_size=3, page_token=token):
        say.say(f"page 2    {_describe(user)}")


async def _chat(client: UserClient, say: _Narrator) -> None:
    say.step("Chat: three messages, echoed with the replica's name and time (bidi stream)")
    async with client.chat(user_id="demo") as session:
        for text in ("hello", "how are you?", "bye"):
            await session.send(text)
        await session.done_writing()
        async for reply in session:
            stamp = reply.message.timestamp.ToJsonString()
            say.say(f"[green]{reply.replica}[/] at {stamp}: {reply.message.text}")


def _stats(client: UserClient, say: _Narrator) -> None:
    say.step("The client's view: per-endpoint stats")
    stats = client.stats()
    table = Table("endpoint", "state", "channels", "in-flight", "calls", "failures")
    for e in stats.endpoints:
        counts = (e.channels, e.in_flight, e.total_calls, e.failures)
        table.add_row(e.address, e.state, *map(str, counts))
    say.console.print(table)
    say.say(f"logical calls {stats.calls}, retries {stats.retries}, failures {stats.failures}")


async def _walk(client: UserClient, say: _Narrator) -> None:
    user = await _create_twice(client, say)
    await _get(client, say, user)
    await _not_found(client, say)
    await _invalid(client, say)
    await _batch(client, say)
    await _listing(client, say)
    await _chat(client, say)
    _stats(client, say)


async def _with_replica(
    tmp: Path, say: _Narrator, body: Callable[[str, str], Awaitable[None]]
) -> int:
    """Run ``body(address, token)`` against a fresh replica; the replica's exit code."""
    secret = secrets.token_urlsafe(32)
    replica = ReplicaProcess(
        _HOST,
        store_url=f"sqlite:///{tmp / 'demo.db'}",
        env={"MESH_AUTH_SECRET": secret, "MESH_REPLICA_NAME": "demo-replica"},
        args=("--metrics-port", "-1"),
    )
    say.step("Start one replica: python -m service --host 127.0.0.1 --port 0 (SQLite store)")
    async with replica:
        say.say(f"replica pid {replica.pid} serving on [bold]{replica.address}[/]")
        await body(replica.address, mint_token(secret, "demo", ("admin",), 600))
        say.step("SIGTERM the replica: graceful shutdown")
        code = await replica.terminate()
        say.say(f"replica exited with code [bold]{code}[/]")
        return code


async def run_tour(console: Console | None = None) -> int:
    """Run the whole tour; 0 when every step behaved as narrated.

    SIGINT and SIGTERM stop it (raising :class:`Interrupted` or
    ``asyncio.CancelledError``) after the replica is killed and the temporary
    directory removed.
    """
    say = _Narrator(console or Console(soft_wrap=True))
    with _stop_on_signals(say):
        return await _demo(say)


@contextlib.contextmanager
def _stop_on_signals(say: _Narrator) -> Iterator[None]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop() -> None:
        say.interrupted = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _demo(say: _Narrator) -> int:
    async def body(address: str, token: str) -> None:
        say.say("minted an admin token (HS256, signed with this run's random secret)")
        async with UserClient(f"static:///{address}", token=token, tracing=False) as client:
            await _walk(client, say)

    with tempfile.TemporaryDirectory(prefix="meshdemo-demo-") as tmp:
        try:
            code = await _with_replica(Path(tmp), say, body)
        except (MeshError, RuntimeError, OSError, TimeoutError) as exc:
            if say.interrupted:
                raise Interrupted from exc
            say.console.print(f"\n[red]demo failed:[/] {type(exc).__name__}: {exc}")
            return 1
    say.console.print("\n[bold green]Done[/]: the replica is gone and its files removed.")
    return 0 if code == 0 else 1


async def run_tour_command(args: argparse.Namespace, state: object, out: TextIO) -> int:
    """``python -m mesh tour``; the exit code (130 when interrupted)."""
    try:
        return await run_tour(Console(file=out, soft_wrap=True))
    except (asyncio.CancelledError, Interrupted):
        print("interrupted; the replica was stopped and its files removed", file=sys.stderr)
        return 130
