"""The public client: :class:`UserClient`, one logical call at a time over the endpoint set.

One logical call is: a deadline (per method, overridable per call), one
tracing span, and the retry loop of ``client._retry``; each attempt picks an
endpoint (another one after a failure, when there is one), leases a channel
from its pool, and reports the outcome to the endpoint (outlier ejection) and
to the endpoint set (re-resolution on UNAVAILABLE). Errors surface as
``client._errors`` exceptions, mapped in one place (:func:`_raise_mapped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, TracerProvider

from client._channels import await_closing
from client._chat import ChatMoved, ChatReconnect, ChatReconnected, ChatSession
from client._endpoint import (
    EjectionConfig,
    Endpoint,
    EndpointDrainingError,
    EndpointStats,
    Lease,
    PoolConfig,
)
from client._errors import from_rpc_error
from client._hedge import (
    Copy,
    HedgeDelay,
    HedgeMark,
    Hedger,
    HedgeTimer,
    HedgingPolicy,
    call_with_hedging,
)
from client._interceptors import (
    ATTEMPT_HEDGE,
    ATTEMPT_PEER,
    CallMetrics,
    MethodStats,
    TokenProvider,
    client_interceptors,
)
from client._picker import Picker
from client._pool import EndpointSet, NoEndpointError
from client._resolver import Resolver, resolver_for
from client._retry import (
    Attempt,
    AttemptFailed,
    RetryBudget,
    RetryPolicy,
    bounded_timeout,
    call_with_retries,
    time_left,
)
from client._tasks import cancel_and_wait
from client._tls import TlsConfig, channel_security
from meshdemo import contract
from meshdemo.v1 import user_pb2

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUTS",
    "DEFAULT_DEADLINES",
    "DEFAULT_HEDGING",
    "HEDGEABLE_METHODS",
    "MAX_BATCH",
    "ROLES",
    "ClientStats",
    "HedgeStats",
    "NewUserSpec",
    "UserClient",
]

T = TypeVar("T")

#: Seconds a whole logical call may take, per method (None: no deadline).
DEFAULT_DEADLINES: Mapping[str, float | None] = {
    "GetUser": 2.0,
    "CreateUser": 5.0,
    "ListUsers": 30.0,
    "BatchCreateUsers": 30.0,
    "Chat": None,
}
#: Seconds one attempt may take, per method (None: the time left to the deadline).
#: A stalled replica then costs one attempt timeout, not the whole deadline.
DEFAULT_ATTEMPT_TIMEOUTS: Mapping[str, float | None] = {
    "GetUser": 0.5,
    "CreateUser": 2.0,
    "ListUsers": None,
    "BatchCreateUsers": None,
}
#: Methods hedged unless told otherwise (ListUsers: until its first response), all
#: with the adaptive delay.
DEFAULT_HEDGING: Mapping[str, HedgingPolicy] = {
    "GetUser": HedgingPolicy(),
    "ListUsers": HedgingPolicy(),
}
#: Methods that may be hedged: those the retry policy may repeat (reads, and writes
#: that carry a request id). Chat never: its messages may not be sent twice.
HEDGEABLE_METHODS = frozenset({"GetUser", "ListUsers", "CreateUser", "BatchCreateUsers"})
#: Most users one BatchCreateUsers call may carry (the service's limit too, from the contract).
MAX_BATCH = contract.MAX_BATCH
#: Role names of the client API and their proto values (the contract's Role enum).
ROLES: Mapping[str, user_pb2.Role.ValueType] = contract.ROLES
# ListUsers page sizes as the service reads them: 0 means the default, more than the most
# means the most.
_DEFAULT_PAGE = contract.DEFAULT_PAGE_SIZE
_MAX_PAGE = contract.MAX_PAGE_SIZE
_SERVICE = contract.SERVICE_NAME
_LIST_BUFFER = 16


@dataclass(frozen=True, slots=True)
class NewUserSpec:
    """One user to create in a batch; ``request_id`` is generated when None."""

    name: str
    email: str
    age: int
    roles: Sequence[str] = ("user",)
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class HedgeStats:
    """Hedging of one method.

    Attributes:
        sent: Copies sent after the first (each took a retry budget token).
        won: Calls whose answer came from such a copy.
        delay: The hedge delay now, in seconds.
    """

    sent: int
    won: int
    delay: float


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of the client.

    Attributes:
        endpoints: Every endpoint (active, then draining): state, channels, counts.
        calls: Logical calls started.
        retries: Retries made (attempts after the first, and Chat reconnects).
        failures: Logical calls that ended in an error.
        methods: Per-method attempt counters and latency (every attempt and hedge copy).
        hedges: Hedges sent (copies after the first, every method).
        hedges_won: Calls a hedge answered first.
        hedging: Per hedged method: hedges sent and won, and the delay now.
    """

    endpoints: tuple[EndpointStats, ...]
    calls: int
    retries: int
    failures: int
    methods: Mapping[str, MethodStats] = field(default_factory=dict)
    hedges: int = 0
    hedges_won: int = 0
    hedging: Mapping[str, HedgeStats] = field(default_factory=dict)


def role_values(roles: Iterable[str]) -> list[user_pb2.Role.ValueType]:
    """Proto role values of role names; ValueError for an unknown name."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; known: {sorted(ROLES)}")
    return [ROLES[r] for r in roles]


def _create_request(spec: NewUserSpec) -> user_pb2.CreateUserRequest:
    return user_pb2.CreateUserRequest(
        name=spec.name,
        email=spec.email,
        age=spec.age,
        roles=role_values(spec.roles),
        request_id=spec.request_id or uuid.uuid4().hex,
    )


def _raise_mapped(err: grpc.RpcError) -> NoReturn:
    """The client's one boundary from grpc errors to ``client._errors`` exceptions."""
    raise from_rpc_error(err) from err


def _unavailable(message: str) -> grpc.aio.AioRpcError:
    """A local UNAVAILABLE for failures before anything reached the wire."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, message, None)


class _ListCursor:
    """Where a ListUsers listing stands: the resume token and what is left of the page."""

    def __init__(self, page_token: str, page_size: int) -> None:
        self.token = page_token
        self.page_size = page_size
        # Negative sizes go to the server unchanged, which refuses them.
        self.left = min(page_size or _DEFAULT_PAGE, _MAX_PAGE) if page_size >= 0 else None
        self.received = 0

    def request(self) -> user_pb2.ListUsersRequest:
        size = self.page_size if self.left is None else self.left
        return user_pb2.ListUsersRequest(page_size=size, page_token=self.token)

    def advance(self, token: str) -> None:
        self.token = token
        self.received += 1
        if self.left is not None:
            self.left -= 1

    @property
    def done(self) -> bool:
        return self.left == 0


@dataclass(frozen=True, slots=True)
class _End:
    """Marks the end of a listing in the hand-over queue, with its error if it failed."""

    error: Exception | None


@dataclass(frozen=True, slots=True)
class _OpenStream:
    """A ListUsers stream that answered: its lease, call, iterator and first response."""

    endpoint: Endpoint
    lease: Lease
    call: Any
    stream: AsyncIterator[user_pb2.ListUsersResponse]
    first: user_pb2.ListUsersResponse | None
    started: float


@dataclass(frozen=True, slots=True)
class _Listed:
    user: user_pb2.User
    next_page_token: str


class UserListing(AsyncIterator[user_pb2.User]):
    """What :meth:`UserClient.list_users` returns: an async iterator of users.

    Attributes:
        next_page_token: The token that resumes right after the last user
            yielded so far (the request's ``page_token`` before the first);
            pass it as ``page_token`` to fetch the next page.
    """

    def __init__(self, page_token: str) -> None:
        self.next_page_token = page_token
        self._users: AsyncGenerator[user_pb2.User, None] | None = None

    def _attach(self, users: AsyncGenerator[user_pb2.User, None]) -> None:
        self._users = users

    def __aiter__(self) -> UserListing:
        return self

    async def __anext__(self) -> user_pb2.User:
        assert self._users is not None
        return await self._users.__anext__()

    async def aclose(self) -> None:
        """Stop the listing early and release its stream."""
        if self._users is not None:
            await self._users.aclose()


class UserClient:
    """Client of the user service: discovery, health, balancing, pooling and retries.

    Use it as an async context manager (or call :meth:`close`)::

        async with UserClient("dns:///users.mesh:50051", token=token) as client:
            user = await client.get_user("u-1")

    Args:
        target: ``static:///h:p,h:p``, ``dns:///name:port``, ``dns://server/name:port``
            or ``k8s:///service.namespace:port``.
        token: A bearer token sent on every call.
        policy: Picker name: least_conn, least_conn_full, round_robin, random.
        retry: Base retry policy; its ``per_attempt_timeout``, when set, applies to
            every unary method instead of ``attempt_timeouts``.
        pool: Channel pool settings per endpoint.
        deadlines: Per-method deadlines in seconds, over :data:`DEFAULT_DEADLINES`.
        tracer_provider: OpenTelemetry provider for the logical and attempt spans
            (the global one when None).
        token_provider: Called per attempt for the token (refreshable); wins over ``token``.
        ejection: Outlier ejection settings.
        attempt_timeouts: Per-method attempt timeouts, over :data:`DEFAULT_ATTEMPT_TIMEOUTS`.
        resolver: A resolver to use instead of the one ``target`` names.
        budget: Retry budget shared by this client's calls (a default one when None).
        clock: Monotonic seconds (deadlines, ejection); a seam for tests.
        rng: Random source (picker, backoff jitter).
        tracing: Whether to create spans: True, False, or None (the default) for
            "when tracing is configured": a ``tracer_provider`` was given, or the
            global provider is a real SDK provider when the client is created.
            With no SDK every span is a no-op, and OpenTelemetry's per-attempt
            interceptor still cost about half again the CPU of a plain call.
        connect_timeout: Seconds a Chat waits for the first resolution.
        tls: TLS settings (:class:`client.TlsConfig`): verify the server
            against a CA and the dialled name, optionally present a client
            certificate; files are re-read for new channels when they change
            (a file that cannot be read at construction raises ValueError).
        credentials: Ready-made channel credentials instead of ``tls`` (not both).
        hedging: Which methods are hedged (see docs/hedging.md): None or True for
            :data:`DEFAULT_HEDGING`; False for none; a :class:`HedgingPolicy` for
            the default methods with that policy; a mapping of method names to
            policies (None turns a method off) over the defaults. Only
            :data:`HEDGEABLE_METHODS` may be named.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        policy: str | Picker = "least_conn",
        retry: RetryPolicy | None = None,
        pool: PoolConfig | None = None,
        deadlines: Mapping[str, float | None] | None = None,
        tracer_provider: TracerProvider | None = None,
        token_provider: TokenProvider | None = None,
        ejection: EjectionConfig | None = None,
        attempt_timeouts: Mapping[str, float | None] | None = None,
        resolver: Resolver | None = None,
        budget: RetryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        tracing: bool | None = None,
        connect_timeout: float = 5.0,
        tls: TlsConfig | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        hedging: bool | HedgingPolicy | Mapping[str, HedgingPolicy | None] | None = None,
    ) -> None:
        self.target = target
        self._hedges = {m: HedgeDelay(p) for m, p in hedging_by_method(hedging).items()}
        self._hedge_counts: dict[str, list[int]] = {m: [0, 0] for m in self._hedges}
        #: Per hedged method, what each hedge sent reports to (made once, not per call).
        self._hedge_reports = {m: functools.partial(self._on_hedge, m) for m in self._hedges}
        #: When each hedged call's first copy is due a hedge: one timer for all of them.
        self._hedge_timer = HedgeTimer()
        self._retry = retry or RetryPolicy()
        self._deadlines = {**DEFAULT_DEADLINES, **(deadlines or {})}
        self._attempt_timeouts = {**DEFAULT_ATTEMPT_TIMEOUTS, **(attempt_timeouts or {})}
        # Per-method retry policies, built on first use: validating a new policy on
        # every call cost about 45 us of CPU (RetryPolicy validation in dataclasses.replace).
        self._policies: dict[str, RetryPolicy] = {}
        self._budget = budget if budget is not None else RetryBudget(clock=clock)
        self._clock = clock
        #: Per hedged unary method, what its calls share and its delay (made once, not per
        #: call). ListUsers hedges its first response inside a retry attempt instead.
        self._hedgers: dict[str, tuple[Hedger[Any], HedgeDelay]] = {
            method: (self._hedger(method, hedge), hedge)
            for method, hedge in self._hedges.items()
            if method != "ListUsers"
        }
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._tracer = trace.get_tracer("meshdemo.client", tracer_provider=tracer_provider)
        self._tracing = tracing_configured(tracer_provider) if tracing is None else tracing
        self.metrics = CallMetrics(clock)
        provider = token_provider or ((lambda: token) if token else None)
        #: Asked for the token per attempt; None for a fixed token (or none), whose
        #: metadata is made once here.
        self._token = token_provider
        #: The last token sent and its metadata, built again only when the token changes.
        self._sent_token: tuple[str | None, tuple[tuple[str, str], ...] | None] = (None, None)
        if token_provider is None:
            self._sent_token = (token, _bearer(token))
        # Unary calls and ListUsers carry the token and are timed in the attempt itself;
        # only Chat's stream-stream calls still go through those two interceptors.
        interceptors = client_interceptors(
            token=provider,
            metrics=self.metrics,
            tracer_provider=tracer_provider,
            tracing=self._tracing,
            streams_only=True,
        )
        self.endpoints = EndpointSet(
            resolver or resolver_for(target),
            picker=policy,
            pool=pool,
            ejection=ejection,
            interceptors=interceptors,
            clock=clock,
            rng=self._rng,
            target=target,
            credentials=channel_security(target, tls=tls, credentials=credentials),
        )
        self._calls = 0
        self._retries = 0
        self._failures = 0
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> UserClient:
        self.endpoints.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop discovery and health watching and close every channel."""
        self._closed = True
        self._hedge_timer.close()
        await self.endpoints.close()

    def stats(self) -> ClientStats:
        """Per-endpoint state and counts, plus call, retry and failure totals."""
        return ClientStats(
            endpoints=tuple(self.endpoints.stats()),
            calls=self._calls,
            retries=self._retries,
            failures=self._failures,
            methods=self.metrics.snapshot(),
            hedges=sum(sent for sent, _ in self._hedge_counts.values()),
            hedges_won=sum(won for _, won in self._hedge_counts.values()),
            hedging={
                method: HedgeStats(sent, won, self._hedges[method].current())
                for method, (sent, won) in sorted(self._hedge_counts.items())
            },
        )

    def __repr__(self) -> str:
        return (
            f"<UserClient {self.target} calls={self._calls} retries={self._retries} "
            f"failures={self._failures} {self.endpoints!r}>"
        )

    # --- unary methods --------------------------------------------------------------------

    async def get_user(self, user_id: str, *, timeout: float | None = None) -> user_pb2.User:
        """Fetch one user by id (retried: a read is idempotent).

        Raises:
            NotFoundError: No user has this id.
            InvalidArgumentError: The id is empty.
            MeshError: Any other failure, by status code.
        """
        request = user_pb2.GetUserRequest(id=user_id)

        def invoke(
            lease: Lease, attempt_timeout: float | None
        ) -> Awaitable[user_pb2.GetUserResponse]:
            # The call itself, to await: a coroutine here would cost every attempt a frame.
            return lease.stub.GetUser(request, timeout=attempt_timeout, metadata=self._metadata())

        reply = await self._unary("GetUser", invoke, call_timeout=timeout)
        return reply.user

    async def create_user(
        self,
        name: str,
        email: str,
        age: int,
        roles: Sequence[str] = ("user",),
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User:
        """Store one user; retried safely because it carries an idempotency key.

        Args:
            name: Display name.
            email: E-mail address, unique across users.
            age: Age in years.
            roles: Role names: "user", "admin", "moderator".
            request_id: Idempotency key; a uuid4 is generated when None.
            timeout: Seconds for the whole call (default :data:`DEFAULT_DEADLINES`).

        Raises:
            ValueError: An unknown role name (nothing is sent).
            InvalidArgumentError: A field the service refuses (see ``field_violations``).
            AlreadyExistsError: The e-mail address is taken.
            PermissionDeniedError: The token lacks the admin role.
        """
        spec = NewUserSpec(name, email, age, tuple(roles), request_id)
        request = _create_request(spec)

        def invoke(
            lease: Lease, attempt_timeout: float | None
        ) -> Awaitable[user_pb2.CreateUserResponse]:
            return lease.stub.CreateUser(
                request, timeout=attempt_timeout, metadata=self._metadata()
            )

        reply = await self._unary("CreateUser", invoke, call_timeout=timeout)
        return reply.user

    async def batch_create_users(
        self,
        users: Iterable[NewUserSpec],
        *,
        timeout: float | None = None,
    ) -> list[user_pb2.User]:
        """Store every user in one transaction, or none.

        The requests are buffered, each with its request id, so a retry replays
        exactly the same stream and gets the same users back.

        Raises:
            ValueError: More than :data:`MAX_BATCH` users, or an unknown role (nothing is sent).
            InvalidArgumentError: Invalid items; field paths name the item index.
        """
        requests = self._batch_requests(users)

        def invoke(
            lease: Lease, attempt_timeout: float | None
        ) -> Awaitable[user_pb2.BatchCreateUsersResponse]:
            return lease.stub.BatchCreateUsers(
                iter(requests), timeout=attempt_timeout, metadata=self._metadata()
            )

        reply = await self._unary("BatchCreateUsers", invoke, call_timeout=timeout)
        return list(reply.users)

    @staticmethod
    def _batch_requests(users: Iterable[NewUserSpec]) -> list[user_pb2.BatchCreateUsersRequest]:
        requests: list[user_pb2.BatchCreateUsersRequest] = []
        for spec in users:
            if len(requests) == MAX_BATCH:
                raise ValueError(f"a batch holds at most {MAX_BATCH} users")
            requests.append(user_pb2.BatchCreateUsersRequest(user=_create_request(spec)))
        return requests

    # --- the logical call -----------------------------------------------------------------

    def _unary(
        self,
        method: str,
        invoke: Callable[[Lease, float | None], Awaitable[T]],
        *,
        call_timeout: float | None,
        idempotent: bool = True,
    ) -> Awaitable[T]:
        """The logical call, to await: its deadline fixed now, then retries or hedges.

        A function, not a coroutine: with no tracing it hands back the retry
        loop's own coroutine (no span to open, no frame of its own).
        """
        deadline = self._deadline(method, call_timeout)
        if not self._tracing:
            return self._with_retries(method, invoke, deadline, idempotent)
        return self._traced(method, invoke, deadline, idempotent)

    async def _traced(
        self,
        method: str,
        invoke: Callable[[Lease, float | None], Awaitable[T]],
        deadline: float | None,
        idempotent: bool,
    ) -> T:
        with self._logical_span(method):
            return await self._with_retries(method, invoke, deadline, idempotent)

    async def _with_retries(
        self,
        method: str,
        invoke: Callable[[Lease, float | None], Awaitable[T]],
        deadline: float | None,
        idempotent: bool,
        *,
        timed: bool = True,
        attempt: Callable[[Attempt], Awaitable[T]] | None = None,
    ) -> T:
        self._check_open()
        self._calls += 1
        hedged = self._hedgers.get(method) if idempotent and timed and attempt is None else None
        try:
            if hedged is not None:
                # One unary call as hedged copies (gRFC A6: instead of the retry loop); each
                # copy is _run_on(endpoint, copy, method, invoke, deadline, hedge).
                hedger, hedge = hedged
                call: Awaitable[T] = hedger.call(
                    self._run_on, deadline, hedge.current(), method, invoke, deadline, hedge
                )
                return await call
            if attempt is None:

                def attempt(spec: Attempt) -> Awaitable[T]:
                    return self._attempt(method, invoke, spec, deadline, timed)  # no own frame

            return await call_with_retries(
                attempt,
                policy=self._policy(method),
                budget=self._budget,
                deadline=deadline,
                idempotent=idempotent,
                clock=self._clock,
                rng=self._rng,
                on_retry=self._on_retry,
            )
        except grpc.RpcError as err:
            self._failures += 1
            _raise_mapped(err)

    def _hedger(self, method: str, hedge: HedgeDelay) -> Hedger[Any]:
        return Hedger(
            self._pick,
            pick_now=self._pick_now,
            policy=hedge.policy,
            budget=self._budget,
            timer=self._hedge_timer,
            per_attempt_timeout=self._policy(method).per_attempt_timeout,
            clock=self._clock,
            on_hedge=self._hedge_reports[method],
            on_won=functools.partial(self._on_won, method),
        )

    def _on_hedge(self, method: str, number: int) -> None:
        self._hedge_counts[method][0] += 1
        trace.get_current_span().add_event("hedge", {"meshdemo.hedge.number": number})

    def _on_won(self, method: str, number: int) -> None:
        self._hedge_counts[method][1] += 1

    async def _attempt(
        self,
        method: str,
        invoke: Callable[[Lease, float | None], Awaitable[T]],
        spec: Attempt,
        deadline: float | None,
        timed: bool,
    ) -> T:
        endpoint = self._pick_now(spec.excluded)  # No coroutine for a pick that needs no wait.
        timeout = spec.timeout
        if endpoint is None:
            # Only discovery's first answer is waited for here, before anything was sent:
            # the call's own time bounds it, and the attempt's timeout runs from the send.
            endpoint = await self._pick(spec.excluded, time_left(deadline, self._clock))
            timeout, _ = bounded_timeout(spec.timeout, deadline, self._clock)
        return await self._run_on(endpoint, None, method, invoke, deadline, None, timeout, timed)

    async def _run_on(
        self,
        endpoint: Endpoint,
        mark: Copy | None,
        method: str,
        invoke: Callable[[Lease, float | None], Awaitable[T]],
        deadline: float | None,
        hedge: HedgeDelay | None = None,
        timeout: float | None = None,
        timed: bool = True,
    ) -> T:
        """One attempt (or hedge copy) on ``endpoint``, its outcome reported to the endpoint.

        ``mark`` is the hedge copy this attempt is, whose timeout it takes, or None
        for an attempt of the retry loop, of ``timeout``. A hedged call's copies run
        it as it is (``run(endpoint, copy, *args)``): no frame between.

        The attempt's timing goes to ``self.metrics`` here, not in an interceptor:
        a grpc.aio interceptor costs every call an extra task and wrapper. A hedge
        copy's latency also feeds its method's ``hedge`` delay: an answer's, and a
        lost race's as a lower bound.
        """
        started = self._clock()
        if mark is not None:
            timeout = mark.timeout
        lease = _lease(endpoint)
        # For the attempt's span only: with no tracing, nothing reads them.
        tracing = self._tracing
        if tracing:
            peer_token = ATTEMPT_PEER.set(endpoint.address)
            mark_token = ATTEMPT_HEDGE.set(mark)
        try:
            result = await invoke(lease, timeout)
        except grpc.RpcError as err:
            self.metrics.record(method, _code(err), self._clock() - started)
            cut = _cut_by_attempt(timeout, started, deadline)
            # A replica that let an attempt time out is at least that slow.
            latency = self._clock() - started if cut and timed else None
            self._attempt_failed(endpoint, err, cut, latency)
            raise AttemptFailed(err, endpoint) from err
        except asyncio.CancelledError:
            if hedge is not None and mark is not None and mark.lost:
                hedge.observe(self._clock() - started, endpoint)
            if mark is not None and mark.outrun and timed:
                # A later copy outran this one by a hedge delay or more: a slow answer, like
                # a per-attempt timeout (latency-aware pickers learn it, and several in a
                # row eject the replica, so least_conn stops feeding a stalled one).
                # Counted as an outrun, not a failure: no call failed.
                endpoint.record_outcome(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    self._clock() - started,
                    outlier=True,
                    outrun=True,
                )
            raise
        finally:
            if tracing:
                ATTEMPT_HEDGE.reset(mark_token)
                ATTEMPT_PEER.reset(peer_token)
            closing = endpoint.release(lease)
            if closing is not None:
                await closing
        elapsed = self._clock() - started
        if hedge is not None:
            hedge.observe(elapsed, endpoint)
        self.metrics.record(method, grpc.StatusCode.OK, elapsed)
        # A stream's duration is set by its reader, so it says nothing of the replica.
        endpoint.record_outcome(grpc.StatusCode.OK, elapsed if timed else None)
        return result

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The attempt's call metadata: the bearer token, asked of the provider per attempt."""
        if self._token is None:  # A fixed token: its metadata never changes.
            return self._sent_token[1]
        token = self._token()
        last, metadata = self._sent_token
        if token != last:
            metadata = _bearer(token)
            self._sent_token = (token, metadata)
        return metadata

    def _pick_now(self, excluded: Collection[object]) -> Endpoint | None:
        """The pick when it needs no wait (the common case), or None: then :meth:`_pick`."""
        # Nothing excluded (every first copy): no call for the list.
        return self.endpoints.pick_resolved(_endpoints_in(excluded) if excluded else ())

    async def _pick(self, excluded: Collection[object], max_wait: float | None) -> Endpoint:
        endpoint = self._pick_now(excluded)
        if endpoint is not None:
            return endpoint
        try:
            return await self.endpoints.wait_pick(_endpoints_in(excluded), max_wait=max_wait)
        except NoEndpointError as exc:
            raise AttemptFailed(_unavailable(str(exc)), None) from exc

    def _attempt_failed(
        self, endpoint: Endpoint, err: grpc.RpcError, cut: bool, latency: float | None = None
    ) -> None:
        code = _code(err)
        outlier = code == grpc.StatusCode.UNAVAILABLE or (
            code == grpc.StatusCode.DEADLINE_EXCEEDED and cut
        )
        endpoint.record_outcome(code, latency, outlier=outlier)
        self.endpoints.report_failure(endpoint, code)

    def _on_retry(self, retry_number: int, code: grpc.StatusCode, delay: float) -> None:
        self._retries += 1
        trace.get_current_span().add_event(
            "retry", {"retry": retry_number, "code": code.name, "delay_s": delay}
        )

    def _policy(self, method: str) -> RetryPolicy:
        policy = self._policies.get(method)
        if policy is None:
            policy = self._policies[method] = self._build_policy(method)
        return policy

    def _build_policy(self, method: str) -> RetryPolicy:
        if self._retry.per_attempt_timeout is not None:
            return self._retry
        return self._retry.with_(per_attempt_timeout=self._attempt_timeouts.get(method))

    def _deadline(self, method: str, timeout: float | None) -> float | None:
        seconds = timeout if timeout is not None else self._deadlines.get(method)
        if seconds is not None and seconds <= 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        return None if seconds is None else self._clock() + seconds

    @contextlib.contextmanager
    def _logical_span(self, method: str) -> Iterator[Span]:
        """The span of one logical call; each attempt's span (from the interceptor) is a child."""
        if not self._tracing:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            f"{_SERVICE}/{method} logical",
            kind=trace.SpanKind.INTERNAL,
            attributes={"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": method},
        ) as span:
            yield span

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    # --- ListUsers ------------------------------------------------------------------------

    def list_users(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> UserListing:
        """Stream users in id order, at most ``page_size`` (0: the server default, 100).

        A stream broken mid-way resumes on another replica right after the last
        user received (its ``next_page_token``), asking only for what is left of
        the page: no duplicate, no gap. The returned :class:`UserListing` also
        tells the token that resumes after the last user it yielded, for the
        next page.

        Raises (from the iterator):
            InvalidArgumentError: A negative page size or a bad page token.
            MeshError: The listing failed and could not be resumed.
        """
        listing = UserListing(page_token)
        listing._attach(self._list_users(_ListCursor(page_token, page_size), timeout, listing))
        return listing

    async def _list_users(
        self, cursor: _ListCursor, call_timeout: float | None, listing: UserListing
    ) -> AsyncGenerator[user_pb2.User, None]:
        deadline = self._deadline("ListUsers", call_timeout)
        # Bounded: the producer reads the stream only as fast as the caller consumes it.
        queue: asyncio.Queue[_Listed | _End] = asyncio.Queue(maxsize=_LIST_BUFFER)
        span = self._start_span("ListUsers")
        producer = asyncio.get_running_loop().create_task(
            self._produce_listing(cursor, queue, deadline, span), name="list-users"
        )
        try:
            while not isinstance(item := await queue.get(), _End):
                listing.next_page_token = item.next_page_token
                yield item.user
            if item.error is not None:
                raise item.error
        finally:
            # Only a caller that stopped early finds the producer still running.
            await cancel_and_wait(producer)
            span.end()

    def _start_span(self, method: str) -> Span:
        if not self._tracing:
            return trace.INVALID_SPAN
        attributes = {"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": method}
        return self._tracer.start_span(f"{_SERVICE}/{method} logical", attributes=attributes)

    async def _produce_listing(
        self,
        cursor: _ListCursor,
        queue: asyncio.Queue[_Listed | _End],
        deadline: float | None,
        span: Span,
    ) -> None:
        # Runs in its own task, so attaching the logical span here leaks to no one.
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            invoke = self._listing_invoker(cursor, queue, self._metadata)
            hedge = self._hedges.get("ListUsers")

            async def attempt(spec: Attempt) -> None:
                try:
                    if hedge is not None:
                        await self._hedged_listing(cursor, queue, spec, deadline, hedge)
                    else:
                        await self._attempt("ListUsers", invoke, spec, deadline, False)
                except AttemptFailed:
                    # Every user asked for had arrived, and only the stream's end was lost
                    # (its replica went away after the last one): the listing is complete,
                    # and a retry would wait out a backoff to ask for nothing. The attempt
                    # was still counted, and its replica charged, as the failure it was.
                    if not cursor.done:
                        raise

            await self._with_retries(
                "ListUsers", invoke, deadline, True, timed=False, attempt=attempt
            )
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            end = _End(exc)
        else:
            end = _End(None)
        finally:
            span.set_attribute("meshdemo.users_received", cursor.received)
            otel_context.detach(token)
        # Not reached when cancelled: the consumer that cancelled waits for no end marker.
        await queue.put(end)

    @staticmethod
    def _listing_invoker(
        cursor: _ListCursor,
        queue: asyncio.Queue[_Listed | _End],
        metadata: Callable[[], tuple[tuple[str, str], ...] | None],
    ) -> Callable[[Lease, float | None], Awaitable[None]]:
        async def invoke(lease: Lease, attempt_timeout: float | None) -> None:
            request = cursor.request()
            call = lease.stub.ListUsers(request, timeout=attempt_timeout, metadata=metadata())
            try:
                # The request asked for exactly what is left, so the stream ends by itself.
                async for item in call:
                    cursor.advance(item.next_page_token)
                    await queue.put(_Listed(item.user, item.next_page_token))
            finally:
                call.cancel()

        return invoke

    async def _hedged_listing(
        self,
        cursor: _ListCursor,
        queue: asyncio.Queue[_Listed | _End],
        spec: Attempt,
        deadline: float | None,
        hedge: HedgeDelay,
    ) -> None:
        """One attempt of a listing: its first response hedged, the rest read from the winner."""

        async def pick(used: frozenset[object], max_wait: float | None) -> Endpoint:
            return await self._pick(spec.excluded | used, max_wait)

        async def open_copy(endpoint: object, copy: Copy) -> _OpenStream:
            assert isinstance(endpoint, Endpoint)
            opened = self._open_stream(endpoint, cursor.request(), copy)
            return await _timed(hedge, endpoint, copy, self._clock, opened)

        won = await call_with_hedging(
            pick,
            open_copy,
            policy=hedge.policy,
            delay=hedge.current(),
            budget=self._budget,
            deadline=deadline,
            clock=self._clock,
            on_hedge=self._hedge_reports["ListUsers"],
            new_call=False,
            discard=self._close_stream,
            timer=self._hedge_timer,
        )
        if won.number > 1:
            self._hedge_counts["ListUsers"][1] += 1
        await self._read_listing(won.value, cursor, queue)

    async def _open_stream(
        self, endpoint: Endpoint, request: user_pb2.ListUsersRequest, copy: Copy
    ) -> _OpenStream:
        """Open a ListUsers stream on ``endpoint`` and wait for its first response (or end)."""
        started = self._clock()
        lease = _lease(endpoint)
        peer = ATTEMPT_PEER.set(endpoint.address)
        mark = ATTEMPT_HEDGE.set(copy)
        call = stream = None
        try:
            call = lease.stub.ListUsers(request, timeout=copy.timeout, metadata=self._metadata())
            stream = call.__aiter__()
            first = await anext(stream, None)
        except BaseException as exc:
            if call is not None:
                call.cancel()
            await _close_iterator(stream)  # ends a tracing span now, not at collection
            await await_closing(endpoint.release(lease))
            if isinstance(exc, grpc.RpcError):
                self.metrics.record("ListUsers", _code(exc), self._clock() - started)
                self._attempt_failed(endpoint, exc, cut=False)
                raise AttemptFailed(exc, endpoint) from exc
            raise
        finally:
            ATTEMPT_HEDGE.reset(mark)
            ATTEMPT_PEER.reset(peer)
        assert stream is not None
        return _OpenStream(endpoint, lease, call, stream, first, started)

    @staticmethod
    async def _close_stream(opened: _OpenStream) -> None:
        """Release a stream that answered but lost the race to another copy."""
        opened.call.cancel()
        await _close_iterator(opened.stream)
        await await_closing(opened.endpoint.release(opened.lease))

    async def _read_listing(
        self, opened: _OpenStream, cursor: _ListCursor, queue: asyncio.Queue[_Listed | _End]
    ) -> None:
        """Hand over the winner's first response and the rest of its stream."""
        endpoint = opened.endpoint
        try:
            item = opened.first
            while item is not None:
                cursor.advance(item.next_page_token)
                await queue.put(_Listed(item.user, item.next_page_token))
                item = await anext(opened.stream, None)
        except grpc.RpcError as err:
            self.metrics.record("ListUsers", _code(err), self._clock() - opened.started)
            self._attempt_failed(endpoint, err, cut=False)
            raise AttemptFailed(err, endpoint) from err
        finally:
            opened.call.cancel()
            await _close_iterator(opened.stream)
            await await_closing(endpoint.release(opened.lease))
        self.metrics.record("ListUsers", grpc.StatusCode.OK, self._clock() - opened.started)
        endpoint.record_outcome(grpc.StatusCode.OK)

    # --- Chat -----------------------------------------------------------------------------

    def chat(
        self,
        *,
        user_id: str = "",
        reconnect: ChatReconnect | None = None,
        on_reconnect: Callable[[ChatReconnected], None] | None = None,
        on_move: Callable[[ChatMoved], None] | None = None,
    ) -> ChatSession:
        """A chat stream that survives its replica (see :class:`ChatSession`).

        Use it as an async context manager: ``await session.send(text)``, then
        ``async for reply in session``. When the stream breaks with a retryable
        failure (UNAVAILABLE: a replica killed, drained, or that stopped
        answering for ``reconnect.answer_timeout`` seconds) the session opens a
        new stream, on another endpoint when there is one, and resends the
        unanswered messages: every message gets exactly one reply, in order.
        Other failures, and a spent reconnect or retry budget, raise a
        MeshError from the iterator (or ``send``). In :meth:`stats` each broken
        stream counts as a failure and each reconnect as a retry; a reconnect
        spends a token of the retry budget.

        Args:
            user_id: Sent as the speaker of every message.
            reconnect: Reconnection settings; ``ChatReconnect(enabled=False)``
                makes every failure surface.
            on_reconnect: Told of every reconnect (the CLI prints it).
            on_move: Told of every quiet move off a replica that stopped taking
                calls while nothing was owed (the CLI prints it too).
        """
        self._check_open()

        def reconnected(event: ChatReconnected) -> None:
            self._retries += 1
            if on_reconnect is not None:
                on_reconnect(event)

        return ChatSession(
            self.endpoints,
            user_id=user_id,
            connect_timeout=self._connect_timeout,
            on_failure=self._chat_failed,
            reconnect=reconnect,
            on_reconnect=reconnected,
            budget=self._budget,
            rng=self._rng,
            on_move=on_move,
        )

    def _chat_failed(self, endpoint: Endpoint, err: grpc.RpcError) -> None:
        self._failures += 1
        self._attempt_failed(endpoint, err, cut=False)


def hedging_by_method(
    hedging: bool | HedgingPolicy | Mapping[str, HedgingPolicy | None] | None,
) -> dict[str, HedgingPolicy]:
    """The hedging policy of every hedged method, from ``UserClient``'s ``hedging`` argument.

    Raises:
        ValueError: A method that may not be hedged (or is unknown), or a value
            that is no :class:`HedgingPolicy`.
    """
    if hedging is None or hedging is True:
        return dict(DEFAULT_HEDGING)
    if hedging is False:
        return {}
    if isinstance(hedging, HedgingPolicy):
        return dict.fromkeys(DEFAULT_HEDGING, hedging)
    if not isinstance(hedging, Mapping):
        raise ValueError(f"hedging must be a bool, a HedgingPolicy or a mapping, got {hedging!r}")
    refused = sorted(set(hedging) - HEDGEABLE_METHODS)
    if refused:
        raise ValueError(
            f"cannot hedge {refused}: only {sorted(HEDGEABLE_METHODS)} may be repeated"
        )
    merged: dict[str, HedgingPolicy | None] = {**DEFAULT_HEDGING, **hedging}
    for method, policy in merged.items():
        if policy is not None and not isinstance(policy, HedgingPolicy):
            raise ValueError(f"hedging[{method!r}] must be a HedgingPolicy or None")
    return {method: p for method, p in merged.items() if p is not None}


def tracing_configured(tracer_provider: TracerProvider | None = None) -> bool:
    """Whether spans would go anywhere: a provider given, or a real global one set."""
    if tracer_provider is not None:
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    code: Any = getattr(err, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


async def _timed(
    hedge: HedgeDelay,
    endpoint: Endpoint,
    mark: HedgeMark,
    clock: Callable[[], float],
    attempt: Awaitable[T],
) -> T:
    """Await a copy, its latency fed to its method's hedge delay (a lost race's: a lower bound)."""
    started = clock()
    try:
        result = await attempt
    except asyncio.CancelledError:
        if mark.lost:
            hedge.observe(clock() - started, endpoint)
        raise
    hedge.observe(clock() - started, endpoint)
    return result


async def _close_iterator(stream: object) -> None:
    """Close an async generator (a response stream an interceptor wrapped), if it is one."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _lease(endpoint: Endpoint) -> Lease:
    """The attempt's lease; a draining endpoint is an UNAVAILABLE attempt (nothing was sent).

    The draining signal is caught here only, around taking the lease: any
    exception the invoker raises, RuntimeError included, propagates as the bug it is.
    """
    try:
        return endpoint.acquire()
    except EndpointDrainingError as exc:  # Drained between the pick and the lease.
        raise AttemptFailed(_unavailable(str(exc)), endpoint) from exc


def _endpoints_in(excluded: Collection[object]) -> Collection[Endpoint]:
    """The endpoints among what a call already used (a hedge's keys may be anything)."""
    return [e for e in excluded if isinstance(e, Endpoint)] if excluded else ()


def _bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The call metadata that carries ``token`` (None without one)."""
    return (("authorization", f"Bearer {token}"),) if token else None


def _cut_by_attempt(timeout: float | None, started: float, deadline: float | None) -> bool:
    """Whether the attempt's own timeout (not the call's deadline) limited it."""
    if timeout is None:
        return False
    return deadline is None or started + timeout < deadline - 1e-6
