"""``chat``: each stdin line is sent on one Chat stream, each echo printed with its replica.

The command's deadline runs only while the server owes something: the stream
being opened, an echo of a line sent, the end of the stream after end of input.
Time spent waiting for the person to type does not count, so an interactive
chat is not cut off, and a replica that never answers still ends the command
within --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any, TextIO

from client._chat import ChatMoved, ChatReconnected
from client._client import UserClient
from client.cli._common import (
    EXIT_OK,
    Deadline,
    Io,
    add_command,
    one_call_budget,
    run_with_client,
)
from meshdemo.v1 import user_pb2

NAME = "chat"


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(
        commands,
        NAME,
        parent,
        "chat interactively: each stdin line is sent, each echo printed with its replica",
        epilog_extra="end of input (Ctrl-D) half-closes the stream; remaining echoes are\n"
        "printed. --timeout bounds each wait for the server (the stream to open, an\n"
        "echo, the end after end of input), not the time spent typing. A stream whose\n"
        "replica dies, drains or stops answering (5 s) reconnects to another and resends\n"
        "the lines not answered yet; stderr notes each reconnect, and each move off a\n"
        "replica that stopped taking calls while no echo was owed.",
    )
    cmd.add_argument(
        "--user-id", default="", help="sent as the speaker of every message (default: anonymous)"
    )


#: Each wait for the server gets this much; :class:`_Owed` renews it.
budget = one_call_budget


class _Owed:
    """The echoes the server owes: the deadline runs while it owes one, from its last answer."""

    def __init__(self, deadline: Deadline, span: float) -> None:
        self._deadline = deadline
        self._span = span
        self.sent = 0
        self.received = 0
        self._ending = False

    def sending(self) -> None:
        if self.sent == self.received:
            self._deadline.renew(self._span)  # the first echo owed starts the clock
        self.sent += 1

    def answered(self) -> None:
        self.received += 1
        if self.sent > self.received or self._ending:
            self._deadline.renew(self._span)
        else:
            self._deadline.pause()

    def idle(self) -> None:
        if self.sent == self.received:
            self._deadline.pause()

    def ending(self) -> None:
        """End of input: from now on the server owes the rest, then the end of the stream."""
        self._ending = True
        self._deadline.renew(self._span)


async def _stdin_lines(stream: TextIO) -> AsyncIterator[str]:
    """Lines of ``stream`` without blocking the loop: a daemon thread reads them.

    A daemon thread never keeps the process alive, even blocked on a terminal.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="chat-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def _print_reply(io: Io, reply: user_pb2.ChatResponse, as_json: bool) -> None:
    message = reply.message
    stamp = message.timestamp.ToJsonString() if message.HasField("timestamp") else ""
    if as_json:
        data = {"replica": reply.replica, "timestamp": stamp, "user_id": message.user_id}
        io.out(json.dumps({**data, "text": message.text}))
    else:
        io.out(f"[{reply.replica} {stamp}] {message.text}")


async def _print_replies(session: Any, io: Io, as_json: bool, owed: _Owed) -> int:
    count = 0
    async for reply in session:
        owed.answered()
        _print_reply(io, reply, as_json)
        count += 1
    return count


async def _send_lines(session: Any, io: Io, owed: _Owed) -> int:
    sent = 0
    async for line in _stdin_lines(io.stdin):
        text = line.rstrip("\r\n")
        if text:
            owed.sending()
            await session.send(text)
            sent += 1
    return sent


async def _chat(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    def reconnected(event: ChatReconnected) -> None:
        io.err(f"reconnected: {event.failed} -> {event.endpoint} ({event.code}: {event.reason})")

    def moved(event: ChatMoved) -> None:
        io.err(f"moved: {event.left} -> {event.endpoint} ({event.state})")

    owed = _Owed(io.deadline, budget(args))
    chat = client.chat(user_id=args.user_id, on_reconnect=reconnected, on_move=moved)
    async with chat as session:
        owed.idle()  # open: from now on only owed echoes count
        printer = asyncio.create_task(_print_replies(session, io, args.json, owed))
        try:
            await _send_lines(session, io, owed)
            # After the half-close the server echoes what is left, then ends the stream.
            owed.ending()
            await session.done_writing()
            await asyncio.shield(printer)
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
    return EXIT_OK


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _chat)
