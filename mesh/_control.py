"""The control channel: commands from other terminals reach the running supervisor.

One JSON object per line over a Unix socket in the state directory (a file,
not a network port, so only this user can reach it): the request names a
command and its arguments, the one reply says ``ok`` and carries the result
or an ``error`` message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ControlError", "ControlServer", "Handler", "request"]

_log = logging.getLogger("meshdemo.mesh")
_MAX_REQUEST = 64 * 1024

#: A command's handler: the request's arguments in, the result document out.
Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The supervisor cannot be reached, or refused the command (the message says why)."""


class ControlServer:
    """Serves commands on a Unix socket until closed.

    Args:
        path: The socket file (replaced if a stale one is there).
        handlers: Command name to handler; a handler raising ValueError refuses
            the command with that message.
    """

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=_MAX_REQUEST
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._dispatch(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            _log.warning("control connection dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "the request is not JSON"}
        if not isinstance(message, dict) or not isinstance(message.get("command"), str):
            return {"ok": False, "error": "the request names no command"}
        handler = self._handlers.get(message["command"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {message['command']!r}"}
        arguments = message.get("arguments") or {}
        if not isinstance(arguments, dict):
            return {"ok": False, "error": "arguments must be an object"}
        try:
            result = await handler(arguments)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "result": result}


async def request(
    path: Path, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one command to the supervisor at ``path``; its result.

    Raises:
        ControlError: Nobody listens there, the reply did not come within
            ``timeout`` seconds, or the supervisor refused the command.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                payload = {"command": command, "arguments": dict(arguments or {})}
                writer.write(json.dumps(payload).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(f"no supervisor listens on {path}") from exc
    except TimeoutError as exc:
        raise ControlError(f"the supervisor did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise ControlError(f"cannot reach the supervisor on {path}: {exc}") from exc
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError("the supervisor's reply is not JSON") from exc
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(str(error or "the supervisor refused the command"))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}
