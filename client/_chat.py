"""Chat sessions: one bidirectional stream pinned to one endpoint, never retried.

A session holds a lease on its endpoint for as long as its stream is open, so
the endpoint's in-flight count (and so least_conn) sees it. When the stream
fails, the error surfaces as a ``client._errors`` exception from the iterator
or from ``send``; :meth:`ChatSession.reconnect` opens a new stream, on another
endpoint when there is one. Nothing is resent: a chat is not idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from client._endpoint import EndpointDrainingError
from client._errors import UnavailableError, from_rpc_error
from client._pool import NoEndpointError
from meshdemo.v1 import user_pb2

if TYPE_CHECKING:
    from client._endpoint import Endpoint
    from client._pool import EndpointSet

__all__ = ["ChatSession"]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


def _local_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, message, None)


class ChatSession:
    """One chat stream. Use ``async with client.chat() as session``.

    Args:
        endpoints: The endpoint set to pick from.
        user_id: Sent as ``ChatMessage.user_id`` on every message.
        connect_timeout: Seconds to wait for the first resolution when opening.
        on_failure: Told of every failed stream (endpoint, error), for outlier accounting.
    """

    def __init__(
        self,
        endpoints: EndpointSet,
        *,
        user_id: str = "",
        connect_timeout: float = 5.0,
        on_failure: Callable[[Endpoint, grpc.RpcError], None] | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._user_id = user_id
        self._connect_timeout = connect_timeout
        self._on_failure = on_failure
        self._stack: contextlib.AsyncExitStack | None = None
        self._call: Any = None
        self._endpoint: Endpoint | None = None
        self._failed = False

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint the open stream is pinned to (None when closed)."""
        return self._endpoint

    async def __aenter__(self) -> ChatSession:
        await self._open(exclude=())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, text: str) -> None:
        """Send one message.

        Raises:
            MeshError: The stream has failed (a subclass by status code).
            RuntimeError: The session is not open.
        """
        call = self._require_call()
        message = user_pb2.ChatMessage(user_id=self._user_id, text=text)
        try:
            await call.write(user_pb2.ChatRequest(message=message))
        except grpc.RpcError as err:
            raise self._failure(err) from err
        except asyncio.InvalidStateError as exc:
            # grpc.aio refuses writes on a finished call: report how it finished.
            raise await self._finished_error() from exc

    def __aiter__(self) -> ChatSession:
        return self

    async def __anext__(self) -> user_pb2.ChatResponse:
        """The next reply; StopAsyncIteration when the server ends the stream."""
        call = self._require_call()
        try:
            reply = await call.read()
        except grpc.RpcError as err:
            raise self._failure(err) from err
        if reply is _EOF:
            raise StopAsyncIteration
        response: user_pb2.ChatResponse = reply
        return response

    async def done_writing(self) -> None:
        """Half-close: the server ends the stream after its last echo."""
        await self._require_call().done_writing()

    async def reconnect(self) -> None:
        """Close this stream and open a new one, on another endpoint when there is one."""
        previous = self._endpoint
        await self.close()
        await self._open(exclude=() if previous is None else (previous,))

    async def close(self) -> None:
        """Cancel the stream (if still open) and give back the endpoint's lease."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        stack, self._stack = self._stack, None
        self._endpoint = None
        if stack is not None:
            await stack.aclose()

    async def _open(self, exclude: tuple[Endpoint, ...]) -> None:
        try:
            endpoint = await self._endpoints.wait_pick(exclude, max_wait=self._connect_timeout)
        except NoEndpointError as exc:
            raise UnavailableError(str(exc), code=grpc.StatusCode.UNAVAILABLE) from exc
        stack = contextlib.AsyncExitStack()
        try:
            lease = await stack.enter_async_context(endpoint.lease())
        except EndpointDrainingError as exc:  # nothing was sent: the caller may reconnect
            raise UnavailableError(str(exc), code=grpc.StatusCode.UNAVAILABLE) from exc
        self._stack, self._endpoint, self._failed = stack, endpoint, False
        self._call = lease.stub.Chat(None)  # None: requests come through write()

    def _require_call(self) -> Any:
        if self._call is None:
            raise RuntimeError("the chat session is not open")
        return self._call

    def _failure(self, err: grpc.RpcError) -> Exception:
        if not self._failed and self._endpoint is not None and self._on_failure is not None:
            self._failed = True
            self._on_failure(self._endpoint, err)
        return from_rpc_error(err)

    async def _finished_error(self) -> Exception:
        call = self._require_call()
        code = await call.code()
        details = await call.details()
        return self._failure(_local_error(code, details or "the chat stream has ended"))
