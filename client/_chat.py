"""Chat sessions: one conversation over a bidirectional stream that survives its replica.

A session holds a lease on its endpoint for as long as its stream is open, so
the endpoint's in-flight count (and so least_conn) sees it. A background task
(the reader) reads the stream; when the stream breaks with a retryable failure
the reader opens a new stream, on another endpoint when there is one, and
resends every message that was sent but not answered, in order.

Matching answers to messages: the contract's Chat answers every request with
exactly one response, in order, on the same stream (HTTP/2 keeps a stream's
frames in order; the servicer yields one echo per request it reads). So the
answers received on a stream answer the oldest unanswered messages, one each,
and no correlation id is needed. The invariants:

1. ``_pending`` holds, in send order, every message sent and not yet answered;
   an answer removes exactly the oldest one.
2. A stream is written each pending message at most once, in order
   (``_Stream.written`` counts the messages it was given).
3. Only the current stream is read; a broken stream is cancelled before the
   next one opens, so an answer the old replica sent too late is never read
   and no message is answered twice to the caller.

Delivery is therefore at-least-once to the servers (a replica that died after
reading a message but before its answer arrived has seen it, and the next
replica sees it again) and exactly-once to the caller (each message gets one
answer, in order). A message with side effects on the server would need an
idempotency key of its own; the echo has none.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from client._channels import await_closing
from client._discovery_backoff import DiscoveryBackoff
from client._endpoint import EndpointDrainingError
from client._errors import UnavailableError, from_rpc_error, rpc_code, rpc_message
from client._pool import NoEndpointError
from client._retry import RetryBudget, is_local_transport_failure
from client._tasks import cancel_and_wait
from meshdemo.v1 import user_pb2

if TYPE_CHECKING:
    from client._endpoint import Endpoint, Lease
    from client._pool import EndpointSet

__all__ = ["ChatReconnect", "ChatReconnected", "ChatSession"]

_log = logging.getLogger("meshdemo.client.chat")
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


def _local_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, message, None)


@dataclass(frozen=True, slots=True)
class ChatReconnect:
    """How a :class:`ChatSession` survives a broken stream; validated on creation.

    Attributes:
        enabled: Reconnect by itself; False makes every failure surface from
            the iterator (and ``send``), as a stream that is never retried.
        max_reconnects: Reconnects in a row without an answer in between; one
            more failure then surfaces as UNAVAILABLE naming the last failure.
        backoff: Wait before the n-th reconnect in a row (an answer resets n).
        answer_timeout: Seconds a stream may go without an answer while a
            message is unanswered before the replica counts as stopped (it is
            then reported as UNAVAILABLE and, when enabled, left for another);
            None leaves detection to the channel keepalive alone.
        retryable_codes: Status codes that make the session reconnect.
            grpcio's local ``INTERNAL: Internal error from Core`` (a write on a
            broken connection) counts as UNAVAILABLE, as in ``RetryPolicy``.
    """

    enabled: bool = True
    max_reconnects: int = 5
    backoff: DiscoveryBackoff = field(
        default_factory=lambda: DiscoveryBackoff(initial=0.05, multiplier=2.0, cap=1.0, jitter=0.5)
    )
    answer_timeout: float | None = 5.0
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_reconnects < 1:
            raise ValueError(f"max_reconnects must be at least 1, got {self.max_reconnects}")
        if self.answer_timeout is not None and not self.answer_timeout > 0:
            raise ValueError(f"answer_timeout must be positive or None, got {self.answer_timeout}")
        if grpc.StatusCode.OK in self.retryable_codes:
            raise ValueError("retryable_codes must not hold OK")

    def is_retryable(self, error: grpc.RpcError) -> bool:
        """Whether a stream that ended with ``error`` is worth a new stream."""
        if rpc_code(error) in self.retryable_codes:
            return True
        return grpc.StatusCode.UNAVAILABLE in self.retryable_codes and is_local_transport_failure(
            error
        )


@dataclass(frozen=True, slots=True)
class ChatReconnected:
    """What ``on_reconnect`` is told after a session moved to a new stream.

    Attributes:
        failed: Address of the endpoint whose stream broke.
        endpoint: Address of the endpoint of the new stream.
        code: Status code name of the failure (UNAVAILABLE for a replica that
            stopped answering, and for grpcio's local "Internal error from Core"
            when the connection was cut under a write).
        reason: The failure's message.
        attempt: Reconnects in a row without an answer, this one included.
        resent: Messages that were sent again on the new stream.
    """

    failed: str
    endpoint: str
    code: str
    reason: str
    attempt: int
    resent: int


@dataclass(frozen=True, slots=True)
class ChatMoved:
    """What ``on_move`` is told after a session left an endpoint that stopped taking calls.

    A quiet move: nothing was owed on the old stream and nothing is sent again.

    Attributes:
        left: Address of the endpoint left.
        endpoint: Address of the endpoint of the new stream.
        state: Why the old one was left: its state then (``DRAINING``,
            ``EJECTED``, ``UNREACHABLE`` or ``NOT_SERVING``).
    """

    left: str
    endpoint: str
    state: str


@dataclass(frozen=True, slots=True)
class _End:
    """The reader is done: the stream ended (error None) or the session failed."""

    error: Exception | None


class _Stream:
    """One Chat call on one endpoint's lease, and how many pending messages it was given."""

    __slots__ = ("call", "endpoint", "half_closed", "lease", "written")

    def __init__(self, endpoint: Endpoint, lease: Lease) -> None:
        self.endpoint = endpoint
        self.lease = lease
        self.call: Any = lease.stub.Chat(None)  # None: requests come through write()
        #: Sequence number of the next pending message to write on this stream.
        self.written = 0
        self.half_closed = False


class ChatSession:
    """One chat conversation. Use ``async with client.chat() as session``.

    ``await session.send(text)`` and ``async for reply in session``, from one
    task or two. Each message sent gets exactly one reply, in order, even when
    the stream's replica dies, drains or freezes: the session then reconnects
    (to another endpoint when there is one) and resends what was not answered.

    Detection bound: a replica that stops answering while a message waits for
    its answer is detected ``reconnect.answer_timeout`` seconds (5 s by
    default) after the last answer or the oldest unanswered send, whichever
    is later. An idle stream (nothing unanswered) on a frozen replica is
    detected by the channel keepalive, within ``PoolConfig.keepalive_time +
    keepalive_timeout`` (15 s by default). A killed replica is noticed at once
    (the connection resets) and a drained one when it ends its streams.

    Args:
        endpoints: The endpoint set to pick from.
        user_id: Sent as ``ChatMessage.user_id`` on every message.
        connect_timeout: Seconds to wait for the first resolution when opening.
        on_failure: Told of every failed stream (endpoint, error), for outlier accounting.
        reconnect: The reconnection settings (a default :class:`ChatReconnect` when None).
        on_reconnect: Told of every reconnect; an exception in it is ignored.
        on_move: Told of every quiet move off an endpoint that stopped taking
            calls (draining, ejected, unreachable, NOT_SERVING) while nothing
            was owed; an exception in it is ignored.
        budget: Retry budget that every reconnect spends a token of; None for none.
        rng: Random source of the backoff's jitter.
        sleep: Awaitable sleep of the backoff; a seam for tests.
    """

    def __init__(
        self,
        endpoints: EndpointSet,
        *,
        user_id: str = "",
        connect_timeout: float = 5.0,
        on_failure: Callable[[Endpoint, grpc.RpcError], None] | None = None,
        reconnect: ChatReconnect | None = None,
        on_reconnect: Callable[[ChatReconnected], None] | None = None,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_move: Callable[[ChatMoved], None] | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._user_id = user_id
        self._connect_timeout = connect_timeout
        self._on_failure = on_failure
        self._policy = reconnect or ChatReconnect()
        self._on_reconnect = on_reconnect
        self._on_move = on_move
        self._budget = budget
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._stream: _Stream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: asyncio.Queue[user_pb2.ChatResponse | _End] = asyncio.Queue()
        #: (sequence number, request) of every message sent and not answered (invariant 1).
        self._pending: collections.deque[tuple[int, user_pb2.ChatRequest]] = collections.deque()
        self._sent = 0
        self._write_lock = asyncio.Lock()
        self._watchdog: asyncio.Timeout | None = None
        self._half_closed = False
        self._error: Exception | None = None
        #: Reconnects since the last answer, and the endpoints that failed meanwhile.
        self._in_a_row = 0
        self._failed_endpoints: list[Endpoint] = []
        self._open = False
        #: The endpoint of the latest stream, kept after it broke (manual reconnect avoids it).
        self._last_endpoint: Endpoint | None = None
        #: Streams replaced after a failure, messages sent again, and quiet moves off
        #: an endpoint that stopped taking calls (draining, NOT_SERVING, ejected).
        self.reconnects = 0
        self.resent = 0
        self.moves = 0

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint the open stream is pinned to (None when closed or between streams)."""
        return None if self._stream is None else self._stream.endpoint

    @property
    def unanswered(self) -> int:
        """Messages sent and not answered yet."""
        return len(self._pending)

    def __repr__(self) -> str:
        where = self._stream.endpoint.address if self._stream is not None else None
        return (
            f"<ChatSession on {where} sent={self._sent} unanswered={len(self._pending)} "
            f"reconnects={self.reconnects} resent={self.resent} moves={self.moves}>"
        )

    # --- the caller's side ----------------------------------------------------------------

    async def __aenter__(self) -> ChatSession:
        self._stream = await self._new_stream(exclude=())
        self._open = True
        self._start_reader()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, text: str) -> None:
        """Send one message; it is answered once, in order, whatever replica answers it.

        Returns once the message is written (or, between streams, queued for
        the next one); a write a frozen replica holds up ends when the bound
        cancels the stream.

        Raises:
            MeshError: The session has failed (a subclass by status code).
            RuntimeError: The session is not open, or was half-closed.
        """
        self._check_usable()
        if self._half_closed:
            raise RuntimeError("the chat session was half-closed: it sends nothing more")
        if not self._pending and self._should_move():
            await self._move()
        message = user_pb2.ChatMessage(user_id=self._user_id, text=text)
        self._pending.append((self._sent, user_pb2.ChatRequest(message=message)))
        self._sent += 1
        self._arm_watchdog()
        if not await self._flush() and not self._policy.enabled:
            raise await self._final_error()

    def __aiter__(self) -> ChatSession:
        return self

    async def __anext__(self) -> user_pb2.ChatResponse:
        """The next reply; StopAsyncIteration when the server ends the stream."""
        if not self._open:
            raise RuntimeError("the chat session is not open")
        item = await self._answers.get()
        if isinstance(item, _End):
            self._answers.put_nowait(item)  # every later read ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def done_writing(self) -> None:
        """Half-close: the server ends the stream after answering every pending message."""
        self._check_usable()
        self._half_closed = True
        await self._flush()

    async def reconnect(self) -> None:
        """Move to a new stream now, on another endpoint when there is one.

        Unanswered messages are resent there; a session that had failed is
        usable again (its answers already received are still delivered first).
        """
        previous = self._last_endpoint
        await self._stop()
        self._error = None
        self._drop_end_marker()
        self._stream = await self._new_stream(exclude=() if previous is None else (previous,))
        self._open = True
        self._start_reader()

    async def close(self) -> None:
        """Cancel the stream (if still open) and give back the endpoint's lease."""
        await self._stop()
        self._open = False
        self._answers.put_nowait(_End(None))

    # --- leaving a draining replica -------------------------------------------------------

    def _should_move(self) -> bool:
        """Whether the stream's endpoint takes no new calls while another one does."""
        stream = self._stream
        if stream is None or stream.endpoint.is_available():
            return False
        return any(e.is_available() for e in self._endpoints.endpoints if e is not stream.endpoint)

    async def _move(self) -> None:
        """Leave a draining (or NOT_SERVING, ejected) endpoint while nothing is unanswered.

        Nothing is lost: no answer is owed on the old stream, which is
        cancelled; the reader sees it is no longer current and reads the new one.
        """
        async with self._write_lock:
            old = self._stream
            if old is None or self._pending:
                return
            try:
                new = await self._new_stream(exclude=(old.endpoint,))
            except UnavailableError:
                return  # nowhere better to go: stay until the stream ends
            if self._stream is not old:  # the reader replaced it meanwhile (it broke)
                await _end_stream(new)
                return
            state = old.endpoint.state
            self._stream = new
        self.moves += 1
        await _end_stream(old)
        if self._on_move is not None:
            event = ChatMoved(str(old.endpoint.address), str(new.endpoint.address), state.name)
            try:
                self._on_move(event)
            except Exception:  # observability never breaks the chat
                _log.exception("on_move hook failed; the chat goes on")

    # --- writing --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if not self._open:
            raise RuntimeError("the chat session is not open")
        if self._error is not None:
            raise self._error

    async def _flush(self) -> bool:
        """Write what the current stream was not given yet (invariant 2); False if a write failed.

        Between streams there is nothing to write to: the next stream's
        reader flushes everything pending.
        """
        async with self._write_lock:
            stream = self._stream
            if stream is None:
                return True
            for sequence, request in list(self._pending):
                if sequence < stream.written:
                    continue
                if not await _write(stream, request):
                    return False
                stream.written = sequence + 1
            if self._half_closed and not stream.half_closed:
                stream.half_closed = True
                return await _write(stream, None)
            return True

    async def _final_error(self) -> Exception:
        """With reconnection off: how the reader saw the stream end (it ends it too)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        return self._error or UnavailableError("the chat stream has ended")

    # --- the reader -----------------------------------------------------------------------

    def _start_reader(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="chat-reader")

    async def _read(self) -> None:
        try:
            while True:
                stream = self._stream
                assert stream is not None
                failure = await self._read_stream(stream)
                if stream is not self._stream:
                    continue  # send() moved the session off a draining replica
                if failure is None and not self._pending:
                    self._answers.put_nowait(_End(None))
                    return
                if failure is None:
                    failure = _local_error(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{stream.endpoint.address} ended the chat with "
                        f"{len(self._pending)} message(s) unanswered",
                    )
                await self._recover(stream, failure)
        except Exception as exc:  # the session's end; a bug too must reach the caller
            error = from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc
            self._error = error
            self._answers.put_nowait(_End(error))

    async def _read_stream(self, stream: _Stream) -> grpc.RpcError | None:
        """Read answers until the stream ends: None when it ended OK, else its failure."""
        flusher = asyncio.get_running_loop().create_task(self._flush(), name="chat-resend")
        try:
            async with asyncio.timeout(self._watch_deadline()) as watchdog:
                self._watchdog = watchdog
                while (reply := await stream.call.read()) is not _EOF:
                    self._answered(reply)
            return None
        except TimeoutError:
            return self._stalled(stream)
        except grpc.RpcError as err:
            return err
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the session is closing
            # grpc.aio raises CancelledError from read() on a call cancelled under
            # it: its channel was closed (the endpoint set drained the endpoint).
            return _local_error(grpc.StatusCode.CANCELLED, "the chat's channel was closed")
        finally:
            self._watchdog = None
            await cancel_and_wait(flusher)

    def _answered(self, reply: user_pb2.ChatResponse) -> None:
        if self._pending:
            self._pending.popleft()  # invariant 1: the oldest unanswered message
        self._in_a_row = 0
        self._failed_endpoints.clear()
        self._answers.put_nowait(reply)
        if self._watchdog is not None:
            self._watchdog.reschedule(self._watch_deadline())

    # --- liveness -------------------------------------------------------------------------

    def _watch_deadline(self) -> float | None:
        """When the stream counts as stopped: answer_timeout from now if a message waits."""
        timeout = self._policy.answer_timeout
        if timeout is None or not self._pending:
            return None
        return asyncio.get_running_loop().time() + timeout

    def _arm_watchdog(self) -> None:
        # Only the first unanswered message arms it: the oldest one sets the bound.
        if self._watchdog is not None and self._watchdog.when() is None:
            self._watchdog.reschedule(self._watch_deadline())

    def _stalled(self, stream: _Stream) -> grpc.RpcError:
        return _local_error(
            grpc.StatusCode.UNAVAILABLE,
            f"no answer from {stream.endpoint.address} within {self._policy.answer_timeout:g} s "
            "(ChatReconnect.answer_timeout): the replica stopped answering",
        )

    # --- recovery -------------------------------------------------------------------------

    async def _recover(self, broken: _Stream, failure: grpc.RpcError) -> None:
        """Replace ``broken`` by a new stream, or raise the error that ends the session."""
        self._stream = None
        self._report(broken.endpoint, failure)
        await _end_stream(broken)
        if not (self._policy.enabled and self._retryable(broken, failure)):
            raise failure
        self._failed_endpoints.append(broken.endpoint)
        while True:
            await self._wait_before_reconnect(failure)
            try:
                stream = await self._new_stream(exclude=self._failed_endpoints)
            except UnavailableError as exc:  # no endpoint now: count it, try again
                failure = _local_error(grpc.StatusCode.UNAVAILABLE, exc.message)
                continue
            self._moved(broken, stream, failure)
            return

    def _retryable(self, broken: _Stream, failure: grpc.RpcError) -> bool:
        # CANCELLED that the session did not ask for: the endpoint set removed the
        # endpoint (drained) and closed its channels under the stream.
        drained = rpc_code(failure) is grpc.StatusCode.CANCELLED and broken.endpoint.draining
        return drained or self._policy.is_retryable(failure)

    async def _wait_before_reconnect(self, failure: grpc.RpcError) -> None:
        self._in_a_row += 1
        if self._in_a_row > self._policy.max_reconnects:
            raise UnavailableError(
                f"the chat gave up after {self._policy.max_reconnects} reconnect(s) in a row "
                f"without an answer (ChatReconnect.max_reconnects); last failure: "
                f"{rpc_code(failure).name}: {rpc_message(failure)}",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from failure
        if self._budget is not None and not self._budget.try_spend():
            raise UnavailableError(
                "the chat did not reconnect: the client's retry budget is spent; "
                f"last failure: {rpc_code(failure).name}: {rpc_message(failure)}",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from failure
        await self._sleep(self._policy.backoff.delay(self._in_a_row, self._rng.random))

    def _moved(self, broken: _Stream, stream: _Stream, failure: grpc.RpcError) -> None:
        self._stream = stream
        self.reconnects += 1
        self.resent += len(self._pending)
        code, reason = rpc_code(failure).name, rpc_message(failure)
        if is_local_transport_failure(failure):
            # grpcio's own word for a connection cut under a write: the retry logic reads
            # it as UNAVAILABLE, and so does the person reading the event.
            code, reason = "UNAVAILABLE", f"connection lost ({reason})"
        event = ChatReconnected(
            failed=str(broken.endpoint.address),
            endpoint=str(stream.endpoint.address),
            code=code,
            reason=reason,
            attempt=self._in_a_row,
            resent=len(self._pending),
        )
        if self._on_reconnect is not None:
            try:
                self._on_reconnect(event)
            except Exception:  # observability never breaks the chat
                _log.exception("on_reconnect hook failed; the chat goes on")

    def _report(self, endpoint: Endpoint, failure: grpc.RpcError) -> None:
        if self._on_failure is not None:
            self._on_failure(endpoint, failure)

    async def _new_stream(self, exclude: Any) -> _Stream:
        try:
            endpoint = await self._endpoints.wait_pick(exclude, max_wait=self._connect_timeout)
        except NoEndpointError as exc:
            raise UnavailableError(str(exc), code=grpc.StatusCode.UNAVAILABLE) from exc
        try:
            lease = endpoint.acquire()
        except EndpointDrainingError as exc:  # nothing was sent: another pick may do
            raise UnavailableError(str(exc), code=grpc.StatusCode.UNAVAILABLE) from exc
        self._last_endpoint = endpoint
        return _Stream(endpoint, lease)

    # --- shutdown -------------------------------------------------------------------------

    async def _stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await cancel_and_wait(reader)
        stream, self._stream = self._stream, None
        if stream is not None:
            await _end_stream(stream)

    def _drop_end_marker(self) -> None:
        kept = [a for a in _drain(self._answers) if not isinstance(a, _End)]
        for answer in kept:
            self._answers.put_nowait(answer)


async def _write(stream: _Stream, request: user_pb2.ChatRequest | None) -> bool:
    """Write one request (None: half-close); False when the stream has failed.

    The reader sees how the stream ended and recovers or reports it, so a
    failed write needs no handling of its own here.
    """
    try:
        if request is None:
            await stream.call.done_writing()
        else:
            await stream.call.write(request)
    except (grpc.RpcError, asyncio.InvalidStateError):  # grpc.aio: a finished call
        return False
    return True


async def _end_stream(stream: _Stream) -> None:
    stream.call.cancel()
    await await_closing(stream.endpoint.release(stream.lease))


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
