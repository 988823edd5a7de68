"""A Chat survives its replica: real replica processes killed, drained and frozen under it.

Every conversation checks what the caller sees: each message sent gets
exactly one answer, in order, whatever happened to the replica. The time
from the fault to the first answer from the new replica is printed (run
with ``-s``) as the measured time to recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from client import (
    ChatReconnect,
    ChatReconnected,
    ChatSession,
    PoolConfig,
    UnavailableError,
    UserClient,
)
from client.cli import main_async
from client.testing import eventually
from service.testing import ReplicaProcess, reader_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

HOSTS = ("127.0.0.2", "127.0.0.3")


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[list[ReplicaProcess]]:
    """Two replica processes sharing one SQLite store; never left running or stopped."""
    store = f"sqlite:///{tmp_path / 'chat.db'}"
    env = {"MESH_SHUTDOWN_GRACE": "0.5"}
    replicas = [ReplicaProcess(host, store_url=store, env=env) for host in HOSTS]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        yield replicas
    finally:
        for replica in replicas:
            await replica.close()  # SIGCONT then SIGKILL: a paused one is not left behind


def client_of(replicas: Sequence[ReplicaProcess], **options: object) -> UserClient:
    target = "static:///" + ",".join(r.address for r in replicas)
    return UserClient(target, token=reader_token(), tracing=False, **options)  # type: ignore[arg-type]


def pinned(session: ChatSession, replicas: Sequence[ReplicaProcess]) -> ReplicaProcess:
    assert session.endpoint is not None
    return next(r for r in replicas if r.address == str(session.endpoint.address))


class Conversation:
    """Sends texts on a session while a reader task collects every answer."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.answers: list[tuple[str, str, float]] = []  # (text, replica, loop time)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for reply in self.session:
            loop_time = asyncio.get_running_loop().time()
            self.answers.append((reply.message.text, reply.replica, loop_time))

    async def say(self, texts: Sequence[str], pause: float = 0.01) -> None:
        for text in texts:
            await self.session.send(text)
            await asyncio.sleep(pause)

    async def wait_answers(self, count: int, within: float = 20.0) -> None:
        await eventually(lambda: len(self.answers) >= count or self._reader.done(), within)
        if self._reader.done():
            self._reader.result()  # raises what ended the session

    async def finish(self) -> None:
        await self.session.done_writing()
        async with asyncio.timeout(20):
            await self._reader

    async def cancel(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    def texts(self) -> list[str]:
        return [text for text, _, _ in self.answers]

    def recovered_after(self, fault_at: float, replica: str) -> float:
        """Seconds from the fault to the first answer from another replica than ``replica``."""
        return next(t for _, r, t in self.answers if r != replica and t >= fault_at) - fault_at


async def run_fault(
    processes: list[ReplicaProcess],
    fault: Callable[[ReplicaProcess], Awaitable[object]],
    name: str,
    *,
    pace: float = 0.01,
    **chat_options: object,
) -> tuple[Conversation, list[ChatReconnected], ChatSession]:
    """10 messages, ``fault`` applied to their replica, then 2 s more messages every ``pace`` s."""
    events: list[ChatReconnected] = []
    texts = [f"{name} {n}" for n in range(10 + int(2.0 / pace))]
    async with client_of(processes) as client:
        async with client.chat(on_reconnect=events.append, **chat_options) as session:  # type: ignore[arg-type]
            talk = Conversation(session)
            try:
                await talk.say(texts[:10])
                await talk.wait_answers(10)
                victim = pinned(session, processes)
                fault_at = asyncio.get_running_loop().time()
                await fault(victim)
                await talk.say(texts[10:], pace)
                await talk.finish()
            finally:
                await talk.cancel()
            took = talk.recovered_after(fault_at, f"replica-{victim.host}")
            print(f"\n{name}: time to recover {took:.3f} s, events {events}")
            assert session.endpoint is None or str(session.endpoint.address) != victim.address
        assert client.stats().retries == len(events)
    assert talk.texts() == texts  # every message answered once, in order
    return talk, events, session


async def test_a_chat_whose_replica_is_killed_continues_on_another(
    processes: list[ReplicaProcess],
) -> None:
    async def kill_mid_stream(victim: ReplicaProcess) -> None:
        asyncio.get_running_loop().call_later(0.1, victim.kill)  # while messages flow

    _, events, _ = await run_fault(processes, kill_mid_stream, "kill")
    assert [e.code for e in events] == ["UNAVAILABLE"]
    assert events[0].failed != events[0].endpoint


async def test_unanswered_messages_are_resent_once_after_a_kill(
    processes: list[ReplicaProcess],
) -> None:
    texts = [f"resend {n}" for n in range(6)]
    events: list[ChatReconnected] = []
    async with client_of(processes) as client:
        async with client.chat(on_reconnect=events.append) as session:
            talk = Conversation(session)
            try:
                await talk.say(texts[:2])
                await talk.wait_answers(2)
                victim = pinned(session, processes)
                victim.pause()  # sent from now on: written to the socket, never answered
                await talk.say(texts[2:5])
                assert session.unanswered == 3
                victim.kill()
                await talk.say(texts[5:])
                await talk.finish()
            finally:
                await talk.cancel()
    assert talk.texts() == texts
    # The three sent into the frozen socket, and the next one if it left before the
    # kill was noticed: resent once each, answered once each.
    assert len(events) == 1
    assert events[0].resent in (3, 4)
    assert session.resent == events[0].resent
    assert {r for _, r, _ in talk.answers[2:]} == {f"replica-{p.host}" for p in processes} - {
        f"replica-{victim.host}"
    }


async def test_a_chat_whose_replica_drains_continues_on_another(
    processes: list[ReplicaProcess],
) -> None:
    async def drain(victim: ReplicaProcess) -> None:
        # SIGTERM: NOT_SERVING, then the server ends its streams after MESH_SHUTDOWN_GRACE.
        asyncio.get_running_loop().create_task(victim.terminate())

    _, events, session = await run_fault(processes, drain, "drain", pace=0.05)
    # Left at a quiet moment (health NOT_SERVING), or when the server ended its streams.
    assert len(events) + session.moves == 1
    assert [e.code for e in events] in ([], ["UNAVAILABLE"])


async def test_a_frozen_replica_is_detected_within_the_answer_timeout(
    processes: list[ReplicaProcess],
) -> None:
    bound = 1.0

    async def freeze(victim: ReplicaProcess) -> None:
        victim.pause()

    talk, events, _ = await run_fault(
        processes, freeze, "freeze", reconnect=ChatReconnect(answer_timeout=bound)
    )
    assert len(events) == 1
    assert "stopped answering" in events[0].reason
    assert events[0].resent >= 1  # the message that met the frozen replica was sent again
    # Detected by the bound, not by keepalive (15 s): recovery took the bound plus a
    # backoff and a connection, far below the keepalive's.
    first_late = next(t for _, r, t in talk.answers[10:] if r != events[0].failed)
    assert first_late - talk.answers[9][2] < bound + 5.0


async def test_a_frozen_replica_under_an_idle_chat_is_detected_by_keepalive(
    processes: list[ReplicaProcess],
) -> None:
    # No answer timeout: the channel keepalive alone, bounded by keepalive_time + timeout.
    pool = PoolConfig(keepalive_time=10.0, keepalive_timeout=1.0)
    events: list[ChatReconnected] = []
    async with client_of(processes, pool=pool) as client:
        reconnect = ChatReconnect(answer_timeout=None)
        async with client.chat(reconnect=reconnect, on_reconnect=events.append) as session:
            await session.send("before")
            assert (await anext(session)).message.text == "before"
            victim = pinned(session, processes)
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            victim.pause()  # nothing unanswered: only the keepalive can notice
            bound = pool.keepalive_time + pool.keepalive_timeout
            await eventually(lambda: session.reconnects > 0, within=bound + 5)
            took = loop.time() - frozen_at
            print(f"\nkeepalive: idle chat left the frozen replica after {took:.3f} s")
            await session.send("during")
            async with asyncio.timeout(5):
                reply = await anext(session)
    assert reply.message.text == "during"
    assert reply.replica != f"replica-{victim.host}"
    assert [e.code for e in events] == ["UNAVAILABLE"]
    assert "ping timeout" in events[0].reason.lower()


async def test_with_reconnection_off_a_killed_replica_surfaces(
    processes: list[ReplicaProcess],
) -> None:
    async with client_of(processes) as client:
        async with client.chat(reconnect=ChatReconnect(enabled=False)) as session:
            await session.send("one")
            await anext(session)
            pinned(session, processes).kill()
            with pytest.raises(UnavailableError):
                await session.send("two")
                await anext(session)
            assert session.reconnects == 0
            with pytest.raises(UnavailableError):  # the session stays failed
                await session.send("three")


async def test_with_reconnection_off_a_frozen_replica_is_still_reported(
    processes: list[ReplicaProcess],
) -> None:
    reconnect = ChatReconnect(enabled=False, answer_timeout=0.5)
    async with client_of(processes) as client:
        async with client.chat(reconnect=reconnect) as session:
            await session.send("one")
            await anext(session)
            pinned(session, processes).pause()
            await session.send("two")
            with pytest.raises(UnavailableError, match=r"no answer from .* within 0.5 s"):
                async with asyncio.timeout(10):
                    await anext(session)


async def test_when_every_replica_is_gone_the_budget_ends_the_chat(
    processes: list[ReplicaProcess],
) -> None:
    events: list[ChatReconnected] = []
    reconnect = ChatReconnect(max_reconnects=3)
    async with client_of(processes) as client:
        async with client.chat(reconnect=reconnect, on_reconnect=events.append) as session:
            await session.send("one")
            await anext(session)
            for replica in processes:
                replica.kill()
            await session.send("two")
            with pytest.raises(UnavailableError) as failed:
                async with asyncio.timeout(20):
                    await anext(session)
    assert "gave up after 3 reconnect(s) in a row without an answer" in failed.value.message
    assert "last failure: UNAVAILABLE" in failed.value.message
    assert len(events) == 3


async def test_the_cli_chat_notes_a_reconnect_and_answers_every_line(
    processes: list[ReplicaProcess],
) -> None:
    read_end, write_end = os.pipe()
    env = {
        "MESH_TARGET": "static:///" + ",".join(r.address for r in processes),
        "MESH_TOKEN": reader_token(),
    }
    out, err = io.StringIO(), io.StringIO()
    with os.fdopen(read_end) as stdin, os.fdopen(write_end, "w") as feed:
        command = asyncio.create_task(
            main_async(["chat"], env=env, stdin=stdin, stdout=out, stderr=err)
        )
        feed.write("first\n")
        feed.flush()
        await eventually(lambda: "first" in out.getvalue(), 10)
        victim = next(r for r in processes if f"[replica-{r.host} " in out.getvalue())
        victim.kill()
        feed.write("second\n")
        feed.close()
        code = await asyncio.wait_for(command, 20)
    replies = out.getvalue().splitlines()
    assert code == 0, err.getvalue()
    assert [line.rsplit("] ", 1)[1] for line in replies] == ["first", "second"]
    assert f"[replica-{victim.host} " not in replies[1]
    # Two right outcomes, by timing: the second line goes out on the killed replica's
    # stream, which breaks, and the session reconnects (noted, with the status); or the
    # client already saw the replica unreachable and moved quietly before sending it,
    # with nothing to resend (seen once in a full CI run): noted as a move.
    notes = err.getvalue().splitlines()
    assert len(notes) == 1, notes
    if notes[0].startswith("reconnected: "):
        assert "UNAVAILABLE" in notes[0]
    else:
        assert notes[0].startswith(f"moved: {victim.host}:") and "(UNREACHABLE)" in notes[0]


async def test_a_large_backlog_sent_to_a_frozen_replica_is_resent_whole(
    processes: list[ReplicaProcess],
) -> None:
    # 1.6 MB unanswered, far beyond one flow-control window: resent while the new
    # stream's answers are read at the same time, so neither side waits on the other.
    texts = [f"{n:04d}" + "x" * 3996 for n in range(400)]
    reconnect = ChatReconnect(answer_timeout=1.0)
    async with client_of(processes) as client:
        async with client.chat(reconnect=reconnect) as session:
            talk = Conversation(session)
            try:
                await talk.say(texts[:1], 0)
                await talk.wait_answers(1)
                pinned(session, processes).pause()
                async with asyncio.timeout(15):
                    await talk.say(texts[1:], 0)
                    await talk.finish()
            finally:
                await talk.cancel()
    assert talk.texts() == texts
    assert session.reconnects == 1
