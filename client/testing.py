"""Test doubles for code that uses the client: time, discovery and replicas you control.

Public so that this project's tests and benchmarks and the users of the client
library test against the same parts:

- :class:`FakeClock`: monotonic seconds and sleeps that move only when the test
  moves them (inject it wherever a ``clock=``/``sleep=`` parameter is taken).
- :class:`ManualResolver`: a resolver whose address sets the test publishes.
- :class:`DnsServer`: a real DNS server on 127.0.0.1 that answers like a
  Kubernetes headless Service (needs the ``testing`` extra, for dnslib).
- :class:`FakeReplica`: a real grpc.aio server on a loopback address serving
  ``meshdemo.v1.UserService`` ``GetUser`` (and optionally health), with a
  delay and failures the test sets; it records every call's metadata.
  :func:`fake_replicas` starts several.
- :func:`eventually`: wait, bounded, for a condition.

Everything listens on loopback only, so a test never sends traffic off the
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._resolver import Address, parse_hostport
from meshdemo.v1 import user_pb2, user_pb2_grpc

if TYPE_CHECKING:
    from client._dns_server import DnsServer

__all__ = [
    "DnsServer",
    "FakeClock",
    "FakeReplica",
    "ManualResolver",
    "eventually",
    "fake_replicas",
]

# Seconds two deadlines may differ by and still count as the same instant.
_EPSILON = 1e-9
# Event-loop turns ``tick()`` gives woken sleepers to run on.
_TURNS = 5


def __getattr__(name: str) -> Any:
    # DnsServer needs dnslib (the ``testing`` extra): imported on first use, so
    # the rest of this module works without it.
    if name == "DnsServer":
        from client._dns_server import DnsServer

        return DnsServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class FakeClock:
    """Monotonic seconds that move only when the test moves them, and sleeps that follow.

    Call it for the time (``clock=fake``) and pass ``fake.sleep`` where a
    ``sleep`` is injected. Sleeps behave in one of two ways:

    - ``auto_advance=False`` (the default): ``await sleep(s)`` waits until
      :meth:`advance` or :meth:`tick` moves the clock to its deadline, so the
      test decides what happens at which instant (exact timing tests).
    - ``auto_advance=True``: ``await sleep(s)`` moves the clock by ``s`` at
      once and returns after one event-loop turn, so the code under test runs
      through virtual time as fast as it can.

    Attributes:
        now: The current reading; a test may also set it directly (time
            never runs backwards: setting it lower is a test bug).
        sleeps: Every duration asked of ``sleep``, in order.
        woke_at: The reading at which each sleep returned, in order.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self.now = start
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self.woke_at: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """How many sleeps are waiting for the clock (cancelled ones excluded)."""
        return sum(1 for _, future in self._sleepers if not future.done())

    @property
    def next_deadline(self) -> float | None:
        """The earliest reading a waiting sleep wakes at, or None when none waits."""
        waiting = [at for at, future in self._sleepers if not future.done()]
        return min(waiting, default=None)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (see the class docstring)."""
        self.sleeps.append(seconds)
        if self.auto_advance:
            self.advance(max(0.0, seconds))
            await asyncio.sleep(0)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sleepers.append((self.now + max(0.0, seconds), future))
            await future
        self.woke_at.append(self.now)

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake the sleeps that are due, earliest first.

        They run at the caller's next await; :meth:`tick` also lets each run at
        its own deadline's reading.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"time never runs backwards (advance({seconds}))")
        self.now += seconds
        self._wake_due()

    async def tick(self, seconds: float = 0.0) -> None:
        """Move the clock forward as an event loop would, then give woken tasks time to run.

        The clock stops at each waiting sleep's deadline on the way: the sleeps
        due then wake (earliest first) and run a few event-loop turns with the
        clock reading that deadline, before it moves on to the next one.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"time never runs backwards (tick({seconds}))")
        target = self.now + seconds
        while (due := self.next_deadline) is not None and due <= target + _EPSILON:
            self.now = max(self.now, due)
            self._wake_due()
            await _turns()
        self.now = max(self.now, target)
        await _turns()

    def _wake_due(self) -> None:
        due = sorted(
            ((at, n, f) for n, (at, f) in enumerate(self._sleepers) if at <= self.now + _EPSILON),
            key=lambda item: item[:2],
        )
        self._sleepers = [(at, f) for at, f in self._sleepers if at > self.now + _EPSILON]
        for _, _, future in due:
            if not future.done():
                future.set_result(None)


async def _turns() -> None:
    for _ in range(_TURNS):
        await asyncio.sleep(0)


class ManualResolver:
    """A resolver (the ``client.Resolver`` protocol) whose address sets the test publishes.

    ``ManualResolver("127.0.0.2:50051", ...)`` publishes that set at once;
    :meth:`publish` sends each further full set. ``resolve_now_calls`` counts
    the re-resolution requests of the endpoint set, and ``last_failure`` is
    the reason the test wants the client to report for an empty set.
    """

    def __init__(self, *addresses: str | Address) -> None:
        self._queue: asyncio.Queue[frozenset[Address] | None] = asyncio.Queue()
        self.resolve_now_calls = 0
        self.last_failure: str | None = None
        self.closed = False
        if addresses:
            self.publish(*addresses)

    def publish(self, *addresses: str | Address) -> None:
        """Publish the full set ``addresses`` (``host:port`` strings or Address values)."""
        self._queue.put_nowait(frozenset(map(_address, addresses)))

    async def updates(self) -> AsyncIterator[frozenset[Address]]:
        """Yield each published set, until :meth:`close`."""
        while (addresses := await self._queue.get()) is not None:
            yield addresses

    def resolve_now(self) -> None:
        """Count the request; the test decides whether a new set follows."""
        self.resolve_now_calls += 1

    async def close(self) -> None:
        """End the ``updates()`` iterator."""
        self.closed = True
        self._queue.put_nowait(None)


def _address(value: str | Address) -> Address:
    return value if isinstance(value, Address) else Address(*parse_hostport(value))


def _local_error(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    return context.abort(grpc.StatusCode.UNIMPLEMENTED, "this fake replica serves GetUser only")


class _FakeUsers(user_pb2_grpc.UserServiceServicer):
    """GetUser answers the id back under the replica's name; the other methods are UNIMPLEMENTED."""

    def __init__(self, replica: FakeReplica) -> None:
        self._replica = replica

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        replica = self._replica
        replica.calls += 1
        replica.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if replica._failures:
            code, message = replica._failures.pop(0)
            await context.abort(code, message)
        if replica.delay:
            await asyncio.sleep(replica.delay)
        return user_pb2.GetUserResponse(user=user_pb2.User(id=request.id, name=replica.name))

    async def CreateUser(self, request: Any, context: Any) -> Any:
        return await _local_error(context)

    async def BatchCreateUsers(self, request_iterator: Any, context: Any) -> Any:
        return await _local_error(context)

    async def ListUsers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await _local_error(context)
        yield None  # pragma: no cover - abort raises

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await _local_error(context)
        yield None  # pragma: no cover - abort raises


class FakeReplica:
    """A real grpc.aio server on ``host`` port 0 that the test steers.

    ``GetUser`` answers ``User(id=<the id asked>, name=<name>)`` after
    ``delay`` seconds, or fails with the statuses queued by :meth:`fail_next`.
    With ``health=True`` it also serves ``grpc.health.v1`` (SERVING until
    :meth:`set_serving` says otherwise); without it a client's health watch
    gets UNIMPLEMENTED, as from a server that has no health service. With
    ``credentials`` (``grpc.ssl_server_credentials(...)``) it serves TLS.

    Use it as ``async with FakeReplica("127.0.0.2", name="a") as replica:``;
    ``replica.address`` is ``host:port`` as bound.

    Attributes:
        name: Put in every answer, so a test sees which replica answered.
        delay: Seconds every ``GetUser`` waits before answering; may be changed.
        calls: ``GetUser`` calls received.
        metadata: Each call's metadata as a dict, in order.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        name: str | None = None,
        delay: float = 0.0,
        health: bool = False,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.host = host
        self._credentials = credentials
        self.name = name if name is not None else host
        self.delay = delay
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self._failures: list[tuple[grpc.StatusCode, str]] = []
        self._health: Any = (
            grpc_health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from the stubs
            if health
            else None
        )
        self._server: grpc.aio.Server | None = None
        self._port = 0

    @property
    def address(self) -> str:
        """``host:port`` as bound; only after :meth:`start`."""
        if self._server is None:
            raise RuntimeError(f"{self!r} is not started")
        return f"{self.host}:{self._port}"

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._server else f"{self.host} (stopped)"
        return f"FakeReplica({self.name!r} at {where})"

    def fail_next(self, code: grpc.StatusCode, count: int = 1, message: str = "") -> None:
        """Make the next ``count`` ``GetUser`` calls fail with ``code``."""
        self._failures.extend([(code, message or f"fake {code.name}")] * count)

    async def set_serving(self, serving: bool) -> None:
        """Publish SERVING or NOT_SERVING on the health service (needs ``health=True``)."""
        if self._health is None:
            raise RuntimeError(f"{self!r} serves no health service (FakeReplica(health=True))")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)

    async def start(self) -> str:
        """Bind port 0 and serve; returns :attr:`address`."""
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already started")
        server = grpc.aio.server()
        user_pb2_grpc.add_UserServiceServicer_to_server(_FakeUsers(self), server)
        if self._health is not None:
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        where = f"{self.host}:0"
        self._port = (
            server.add_insecure_port(where)
            if self._credentials is None
            else server.add_secure_port(where, self._credentials)
        )
        await server.start()
        self._server = server
        return self.address

    async def stop(self, grace: float | None = 0) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds (0 cancels them)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def __aenter__(self) -> FakeReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def fake_replicas(hosts: Iterable[str], **options: Any) -> AsyncIterator[list[FakeReplica]]:
    """One started :class:`FakeReplica` per host (``options`` go to each), stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeReplica(host, **options)) for host in hosts]


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Return once ``predicate()`` holds, polling every 10 ms.

    Raises:
        AssertionError: It did not hold within ``within`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
