"""The load generator engine: a bounded mix of calls through one client, measured.

``run_load(client, config, on_tick)`` seeds users (optional), then runs
``config.concurrency`` workers until ``config.duration`` seconds have passed,
``config.max_calls`` operations have started, or the caller's ``stop`` event
is set, whichever comes first. It knows nothing of terminals: ``on_tick``
receives a :class:`LoadSnapshot` every ``config.tick_interval`` seconds, and
the result is a :class:`LoadSummary` (marked ``interrupted`` after a stop).

Two time scales: cumulative figures (``calls``, ``share``, ``latency_ms``)
count since the run started; window figures (``rate``, ``rps``,
``window_latency_ms``, ``window_failed``, ``window_retries``) count what
happened since the previous snapshot, which is what a timeline plots.

Endpoints are counted by address: when the client replaces the endpoint of
an address (removed from discovery, then added again), the counts of the old
one are kept and the new one's added, so a replica's share covers the run.

Pacing:
    * closed loop (``rps == 0``): each worker starts its next operation as soon as
      the previous one ends; the rate is whatever the concurrency allows.
    * open loop (``rps > 0``): operation ``i`` is due at ``start + i / rps``,
      whatever happened before. A worker that takes slot ``i`` sleeps until it is
      due; when every worker was busy and the slot starts more than
      ``late_after`` seconds after it was due, the operation is counted *late*.
      A slow server therefore shows up as late calls and a lower achieved rate,
      never as a silently lowered offered rate. Latency is measured from the
      actual start of each operation.

One operation is one logical call (``chat`` is one stream of
``chat_messages`` round trips). Every loop is bounded in count and time:
workers stop claiming at the deadline, every call carries ``call_timeout``,
and anything still running ``drain_timeout`` seconds after the deadline is
cancelled (and not counted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import grpc

from client._errors import MeshError, rpc_code
from client._histogram import LatencyHistogram, LatencySummary
from client._tasks import cancel_and_wait
from meshdemo.v1 import user_pb2

__all__ = [
    "DEFAULT_MIX",
    "OPERATIONS",
    "Bounds",
    "ChatStream",
    "ClientInfo",
    "EndpointInfo",
    "EndpointRow",
    "LoadClient",
    "LoadConfig",
    "LoadSnapshot",
    "LoadSummary",
    "OperationRow",
    "error_code",
    "flag_of",
    "parse_mix",
    "run_load",
]

#: Operation names a mix may use.
OPERATIONS = ("get", "create", "list", "batch", "chat")
#: The default mix, by weight.
DEFAULT_MIX: tuple[tuple[str, int], ...] = (("get", 80), ("create", 10), ("list", 10))
#: Most user ids kept for ``get`` (older ones are replaced at random).
_MAX_KNOWN_IDS = 10_000
#: Users per BatchCreateUsers call while seeding.
_SEED_CHUNK = 500
#: ``final_state`` of an endpoint that was gone from the client at the end of the run.
REMOVED = "REMOVED"


# --- what the engine needs of a client ------------------------------------------------------


class ChatStream(Protocol):
    """The part of a chat session the engine uses."""

    async def send(self, text: str) -> None: ...
    async def done_writing(self) -> None: ...
    def __aiter__(self) -> AsyncIterator[user_pb2.ChatResponse]: ...


class EndpointInfo(Protocol):
    """The part of one endpoint's stats the engine reads."""

    @property
    def address(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def total_calls(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def times_ejected(self) -> int: ...
    @property
    def outruns(self) -> int: ...


class ClientInfo(Protocol):
    """The part of ``UserClient.stats()`` the engine reads."""

    @property
    def endpoints(self) -> Sequence[EndpointInfo]: ...
    @property
    def retries(self) -> int: ...
    @property
    def hedges(self) -> int: ...
    @property
    def hedges_won(self) -> int: ...


class LoadClient(Protocol):
    """What ``run_load`` calls: ``client.UserClient`` fits."""

    async def get_user(
        self,
        user_id: str,
        *,
        timeout: float | None = None,
    ) -> user_pb2.User: ...

    async def create_user(
        self,
        name: str,
        email: str,
        age: int,
        roles: Sequence[str] = ...,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> user_pb2.User: ...

    def list_users(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AsyncIterator[user_pb2.User]: ...

    async def batch_create_users(
        self,
        users: Iterable[Any],
        *,
        timeout: float | None = None,
    ) -> list[user_pb2.User]: ...

    def chat(self, *, user_id: str = "") -> AbstractAsyncContextManager[Any]: ...

    def stats(self) -> ClientInfo: ...


# --- configuration ---------------------------------------------------------------------------


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """Parse ``get=80,create=10,list=10`` into (operation, weight) pairs.

    Raises:
        ValueError: An unknown operation, a repeated one, a weight that is not a
            non-negative integer, or weights that add up to zero.
    """
    pairs: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or name not in OPERATIONS:
            raise ValueError(f"bad mix entry {part!r}: use NAME=WEIGHT with NAME in {OPERATIONS}")
        if any(name == seen for seen, _ in pairs):
            raise ValueError(f"operation {name!r} given twice in the mix")
        if not weight.strip().isdigit():
            raise ValueError(f"weight of {name!r} must be a non-negative integer, got {weight!r}")
        pairs.append((name, int(weight)))
    _check_mix(pairs)
    return tuple(pairs)


def _check_mix(pairs: Sequence[tuple[str, int]]) -> None:
    if not pairs or sum(w for _, w in pairs) <= 0:
        raise ValueError("the mix needs at least one operation with a positive weight")
    unknown = [name for name, _ in pairs if name not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; known: {list(OPERATIONS)}")


@dataclass(frozen=True, slots=True)
class Bounds:
    """The values a numeric setting accepts: ``low`` to ``high``, each end optional.

    ``low_open`` leaves ``low`` itself out: ``Bounds(0, low_open=True)`` is "positive".
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def problem(self, value: float) -> str:
        """Why ``value`` is out of bounds, or '' when it is within them."""
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and value > self.high
        return f"must be {self.text()}, got {value}" if too_low or too_high else ""

    def text(self) -> str:
        """``in [1, 1000]``, ``positive``, ``at least 0``: for messages and --help."""
        if self.high is None:
            return "positive" if self.low_open and self.low == 0 else f"at least {_num(self.low)}"
        opening = "(" if self.low_open else "["
        return f"in {opening}{_num(self.low)}, {_num(self.high)}]"


def _num(value: float | None) -> str:
    """1000000, not 1e+06: bounds are read by people."""
    return str(int(value)) if value is not None and value == int(value) else str(value)


def _setting(
    help: str,
    default: Any = dataclasses.MISSING,
    *,
    bounds: Bounds | None = None,
    parse: Callable[[str], Any] = str,
    flag: str | None = None,
    shared: bool = False,
    metavar: str | None = None,
    default_text: str | None = None,
) -> Any:
    """A :class:`LoadConfig` field with what its command-line flag needs, declared once.

    Args:
        help: What the setting means (--help adds the bounds and the default).
        default: The engine's default, which is also the flag's; none makes it required.
        bounds: The values accepted, checked on creation and by the flag's parser.
        parse: Turns the flag's text into a value (``float``, ``int``, :func:`parse_mix`).
        flag: The flag's name when it is not ``--`` + the field name with dashes.
        shared: The flag is one of the CLI's connection options (declared there, not
            by ``load``): ``--timeout``, ``--policy``.
        metavar: The flag's value placeholder in --help.
        default_text: How --help words the default when its value would not say it.
    """
    metadata = {
        "help": help,
        "bounds": bounds,
        "parse": parse,
        "flag": flag,
        "shared": shared,
        "metavar": metavar,
        "default_text": default_text,
    }
    return field(default=default, metadata=metadata)


def flag_of(setting: dataclasses.Field[Any]) -> str:
    """The command-line flag of one :class:`LoadConfig` field."""
    return setting.metadata["flag"] or "--" + setting.name.replace("_", "-")


_POSITIVE = Bounds(0, low_open=True)
_NON_NEGATIVE = Bounds(0)
_SECONDS = "SECONDS"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load run; validated on creation.

    Each field is declared with :func:`_setting`: its meaning, default, bounds and
    command-line flag live there once; the ``load`` command's options are made
    from them, so the CLI and the engine cannot disagree.

    Attributes:
        duration: Seconds of load (required; the run's hard bound with ``max_calls``).
        rps: Target operations per second; 0 runs a closed loop.
        concurrency: Workers, so at most this many operations in flight.
        max_calls: Most operations started, whatever the duration.
        mix: (operation, weight) pairs; see :data:`OPERATIONS`.
        seed_users: Users created (in batches) before the run so ``get`` finds real
            ids (10 by default: without any, every ``get`` is NOT_FOUND).
        call_timeout: Seconds each operation may take.
        tick_interval: Seconds between ``on_tick`` snapshots.
        late_after: An open-loop operation starting this many seconds after it was
            due counts as late.
        drain_timeout: Seconds after the deadline before unfinished operations are cancelled.
        list_page_size: Users per ``list`` operation.
        batch_size: Users per ``batch`` operation.
        chat_messages: Round trips per ``chat`` operation.
        policy: The client's picker name, reported in the summary (not applied here).
        seed: Seed of the random source (operation choice, ids); None: ``run_load``
            draws one and reports it in the summary, so any run can be repeated.

    Raises:
        ValueError: A value out of its bounds, or a bad mix.
    """

    duration: float = _setting(
        "how long the load runs, in seconds",
        bounds=Bounds(0, 86_400, low_open=True),
        parse=float,
        metavar=_SECONDS,
    )
    rps: float = _setting(
        "target operations per second; 0 = as fast as the concurrency allows",
        0.0,
        bounds=Bounds(0, 1_000_000),
        parse=float,
    )
    concurrency: int = _setting(
        "operations in flight at most", 8, bounds=Bounds(1, 10_000), parse=int, metavar="N"
    )
    max_calls: int = _setting(
        "stop after starting this many operations",
        1_000_000,
        bounds=Bounds(1, 100_000_000),
        parse=int,
        metavar="N",
    )
    mix: tuple[tuple[str, int], ...] = _setting(
        f"operation weights among {', '.join(OPERATIONS)}",
        DEFAULT_MIX,
        parse=parse_mix,
        default_text=",".join(f"{name}={weight}" for name, weight in DEFAULT_MIX),
    )
    seed_users: int = _setting(
        "create N users before the run so gets hit real ids",
        10,
        bounds=Bounds(0, 100_000),
        parse=int,
        metavar="N",
    )
    call_timeout: float = _setting(
        "seconds each operation may take",
        5.0,
        bounds=_POSITIVE,
        parse=float,
        flag="--timeout",
        shared=True,
    )
    tick_interval: float = _setting(
        "seconds between snapshots (live view refreshes, event checks); plain "
        "figures come at most once a second",
        0.25,
        bounds=_POSITIVE,
        parse=float,
        flag="--refresh",
        metavar=_SECONDS,
    )
    late_after: float = _setting(
        "with --rps, an operation starting this many seconds after it was due counts as late",
        0.010,
        bounds=_NON_NEGATIVE,
        parse=float,
        metavar=_SECONDS,
    )
    drain_timeout: float | None = _setting(
        "seconds operations still running at the end may take before they are cancelled",
        None,
        bounds=_NON_NEGATIVE,
        parse=float,
        metavar=_SECONDS,
        default_text="--timeout + 1",
    )
    list_page_size: int = _setting(
        "users per list operation", 10, bounds=Bounds(1, 1000), parse=int, metavar="N"
    )
    batch_size: int = _setting(
        "users per batch operation", 5, bounds=Bounds(1, 1000), parse=int, metavar="N"
    )
    chat_messages: int = _setting(
        "round trips per chat operation", 3, bounds=Bounds(1, 1000), parse=int, metavar="N"
    )
    policy: str = _setting(
        "the client's picker, reported in the summary", "", flag="--policy", shared=True
    )
    seed: int | None = _setting(
        "seed of the random operation choice, for repeatable runs",
        None,
        parse=int,
        default_text="drawn at random and shown in the summary",
    )

    def __post_init__(self) -> None:
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            bounds: Bounds | None = setting.metadata["bounds"]
            problem = "" if bounds is None or value is None else bounds.problem(value)
            if problem:
                raise ValueError(f"{setting.name} {problem}")
        _check_mix(self.mix)

    @property
    def longest(self) -> float:
        """Seconds the whole run may take: seeding (each batch within ``call_timeout``),
        ``duration``, then the :attr:`grace` of the operations still running."""
        seed_batches = -(-self.seed_users // _SEED_CHUNK)
        return seed_batches * self.call_timeout + self.duration + self.grace

    @property
    def grace(self) -> float:
        """Seconds in-flight operations get after the deadline."""
        return self.call_timeout + 1.0 if self.drain_timeout is None else self.drain_timeout

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (the mix as a mapping)."""
        values = asdict(self)
        values["mix"] = dict(self.mix)
        return values


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One endpoint (address) during a run.

    Attributes:
        address: ``host:port``.
        state: Its ``EndpointState`` name now; in a summary the state at the end
            (``REMOVED`` when the client no longer had it).
        in_flight: Attempts running on it now.
        calls: Attempts it served since the run started (retries and hedges included).
        failures: Attempts that failed on it since the run started.
        share: ``calls`` over every endpoint's calls of the run (0 before any call).
        rate: Attempts per second since the previous snapshot (in a summary: the
            run's average).
        ejections: Times it was ejected as an outlier during the run.
        outruns: Hedge copies on it that a later copy beat since the run started:
            slow answers, not ``failures`` (they count towards ejection all the same).
    """

    address: str
    state: str
    in_flight: int
    calls: int
    failures: int
    share: float
    rate: float = 0.0
    ejections: int = 0
    outruns: int = 0


@dataclass(frozen=True, slots=True)
class OperationRow:
    """One operation kind (get, create, ...) over a run: counts and latency."""

    calls: int
    ok: int
    failed: int
    latency_ms: LatencySummary

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "latency_ms": self.latency_ms.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """The run so far, for a live view.

    ``rps`` is the rate since the previous snapshot; ``rps_overall`` since the start.
    ``latency_ms`` covers every operation finished so far; ``window_latency_ms``
    only those finished since the previous snapshot, as do ``window_failed``
    (operations that failed), ``window_retries`` (retries the client made) and
    ``window_hedges`` (hedges it sent); ``hedges`` and ``hedges_won`` count hedges
    sent and hedges that answered first since the run started.
    ``endpoints`` lists the client's endpoints now, one row per address.
    The windows never overlap, so their counts add up to the run's. The rates
    (``rps``, each endpoint's ``rate``) of a final snapshot that came less than
    a tick after the previous one are over the time since the snapshot before
    that: a run's tail (its last calls draining, a few milliseconds) is too
    short for a rate.
    """

    elapsed: float
    remaining: float
    calls: int
    ok: int
    failed: int
    in_flight: int
    late: int
    retries: int
    rps: float
    rps_overall: float
    target_rps: float
    errors_by_code: Mapping[str, int]
    latency_ms: LatencySummary
    endpoints: tuple[EndpointRow, ...]
    window_latency_ms: LatencySummary
    window_failed: int
    window_retries: int
    hedges: int = 0
    hedges_won: int = 0
    window_hedges: int = 0


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """The result of a run. ``calls == ok + failed``; shares add up to 1 (or are all 0).

    ``per_endpoint`` has every address that served the run (removed ones with
    state ``REMOVED``); ``per_operation`` every operation of the mix; ``seed`` the
    seed that drove the run (None only when the caller passed its own ``rng``
    and no seed); ``interrupted`` is true when ``stop`` ended the run early, and
    the figures then count the operations that finished.
    """

    calls: int
    ok: int
    failed: int
    late: int
    retries: int
    seeded: int
    duration: float
    rps: float
    errors_by_code: Mapping[str, int]
    latency_ms: LatencySummary
    per_endpoint: Mapping[str, EndpointRow]
    policy: str
    config: LoadConfig
    seed: int | None = None
    per_operation: Mapping[str, OperationRow] = field(default_factory=dict)
    interrupted: bool = False
    hedges: int = 0
    hedges_won: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``load --json`` and ``--summary``."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "retries": self.retries,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
            "late": self.late,
            "seeded": self.seeded,
            "rps": round(self.rps, 3),
            "latency_ms": self.latency_ms.as_dict(),
            "per_endpoint": {
                address: {
                    "calls": row.calls,
                    "share": round(row.share, 6),
                    "failures": row.failures,
                    "ejections": row.ejections,
                    "outruns": row.outruns,
                    "final_state": row.state,
                }
                for address, row in sorted(self.per_endpoint.items())
            },
            "per_operation": {name: row.as_dict() for name, row in self.per_operation.items()},
            "policy": self.policy,
            "duration": round(self.duration, 3),
            "seed": self.seed,
            "interrupted": self.interrupted,
            "config": self.config.as_dict(),
        }


def error_code(exc: BaseException) -> str:
    """The status code name an operation's failure counts under.

    MeshError and grpc errors by their code; a local timeout as
    DEADLINE_EXCEEDED; a refused argument as INVALID_ARGUMENT; anything else UNKNOWN.
    """
    if isinstance(exc, MeshError):
        return exc.code.name
    if isinstance(exc, grpc.RpcError):
        return rpc_code(exc).name
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED.name
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT.name
    return grpc.StatusCode.UNKNOWN.name


# --- the workload: what one operation does ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NewUser:
    """A user of a batch; has the fields ``client.NewUserSpec`` has."""

    name: str
    email: str
    age: int
    roles: tuple[str, ...] = ("user",)
    request_id: str | None = None


class _Workload:
    """Chooses operations by weight and runs them; remembers ids for ``get``."""

    def __init__(self, client: LoadClient, config: LoadConfig, rng: random.Random) -> None:
        self._client = client
        self._config = config
        self._rng = rng
        self._names = [name for name, weight in config.mix if weight > 0]
        self._weights = [weight for _, weight in config.mix if weight > 0]
        self._run_tag = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
        self._serial = 0
        self.known_ids: list[str] = []
        self._ops: dict[str, Callable[[], Awaitable[None]]] = {
            "get": self._get,
            "create": self._create,
            "list": self._list,
            "batch": self._batch,
            "chat": self._chat,
        }

    @property
    def operations(self) -> list[str]:
        """The operations this mix draws from, in mix order."""
        return list(self._names)

    def choose(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        """The next operation's name and callable, drawn by weight."""
        name = self._rng.choices(self._names, self._weights)[0]
        return name, self._ops[name]

    def _new_user(self) -> _NewUser:
        self._serial += 1
        tag = f"{self._run_tag}-{self._serial}"
        return _NewUser(f"load {tag}", f"load-{tag}@example.com", self._rng.randint(0, 150))

    def _remember(self, users: Iterable[user_pb2.User]) -> None:
        for user in users:
            if len(self.known_ids) < _MAX_KNOWN_IDS:
                self.known_ids.append(user.id)
            else:
                self.known_ids[self._rng.randrange(_MAX_KNOWN_IDS)] = user.id

    async def seed(self, count: int) -> int:
        """Create ``count`` users in batches; the number created."""
        created = 0
        while created < count:
            chunk = [self._new_user() for _ in range(min(_SEED_CHUNK, count - created))]
            users = await self._client.batch_create_users(chunk, timeout=self._config.call_timeout)
            self._remember(users)
            created += len(users)
        return created

    async def _get(self) -> None:
        # With no id known yet, a made-up id gets (and counts) NOT_FOUND.
        user_id = self._rng.choice(self.known_ids) if self.known_ids else "load-unknown-id"
        await self._client.get_user(user_id, timeout=self._config.call_timeout)

    async def _create(self) -> None:
        spec = self._new_user()
        user = await self._client.create_user(
            spec.name, spec.email, spec.age, timeout=self._config.call_timeout
        )
        self._remember([user])

    async def _list(self) -> None:
        stream = self._client.list_users(
            page_size=self._config.list_page_size, timeout=self._config.call_timeout
        )
        async for _ in stream:
            pass

    async def _batch(self) -> None:
        specs = [self._new_user() for _ in range(self._config.batch_size)]
        users = await self._client.batch_create_users(specs, timeout=self._config.call_timeout)
        self._remember(users)

    async def _chat(self) -> None:
        async with asyncio.timeout(self._config.call_timeout):
            async with self._client.chat() as session:
                await _chat_round_trips(session, self._config.chat_messages)


async def _chat_round_trips(session: ChatStream, count: int) -> None:
    replies = aiter(session)
    for number in range(count):
        await session.send(f"load message {number}")
        await anext(replies)
    await session.done_writing()


# --- the run: counters, pacing, snapshots -----------------------------------------------------


#: One endpoint's raw counters: (total_calls, failures, times_ejected, outruns).
_Raw = tuple[int, int, int, int]
_NO_COUNTS: _Raw = (0, 0, 0, 0)


@dataclass(slots=True)
class _Tally:
    """One address's counts during the run, kept across the client's endpoint objects.

    ``seen`` holds the raw (total_calls, failures, times_ejected, outruns) last
    observed for the address. Raw counters only grow for one endpoint object, so a
    drop means the client replaced it: the new object's counters are then added whole.
    """

    seen: _Raw
    calls: int = 0
    failures: int = 0
    ejections: int = 0
    outruns: int = 0
    state: str = REMOVED
    in_flight: int = 0
    present: bool = False

    def observe(self, raw: _Raw) -> None:
        replaced = any(now < before for now, before in zip(raw, self.seen, strict=True))
        base = _NO_COUNTS if replaced else self.seen
        self.calls += raw[0] - base[0]
        self.failures += raw[1] - base[1]
        self.ejections += raw[2] - base[2]
        self.outruns += raw[3] - base[3]
        self.seen = raw


class _Endpoints:
    """Per-address tallies of the run, in first-seen order."""

    def __init__(self, baseline: ClientInfo) -> None:
        self._tallies: dict[str, _Tally] = {}
        for address, raw in _raw_by_address(baseline).items():
            self._tallies[address] = _Tally(seen=raw[0])

    def observe(self, stats: ClientInfo) -> None:
        current = _raw_by_address(stats)
        for tally in self._tallies.values():
            tally.present = False
        for address, (raw, state, in_flight) in current.items():
            tally = self._tallies.setdefault(address, _Tally(seen=_NO_COUNTS))
            tally.observe(raw)
            tally.state, tally.in_flight, tally.present = state, in_flight, True
        for tally in self._tallies.values():
            if not tally.present:
                # Gone: a later endpoint of this address starts from zero.
                tally.seen, tally.state, tally.in_flight = _NO_COUNTS, REMOVED, 0

    def items(self) -> list[tuple[str, _Tally]]:
        return list(self._tallies.items())

    def present(self, address: str) -> bool:
        return self._tallies[address].present

    def total_calls(self) -> int:
        return sum(t.calls for t in self._tallies.values())


def _raw_by_address(stats: ClientInfo) -> dict[str, tuple[_Raw, str, int]]:
    """(raw counters, state, in_flight) per address; the first entry's state.

    The client lists active endpoints before draining ones, so when an address has
    both (re-added while the old one drains) the counters are summed and the state
    shown is the active one's.
    """
    merged: dict[str, tuple[_Raw, str, int]] = {}
    for e in stats.endpoints:
        (calls, failures, ejections, outruns), state, in_flight = merged.get(
            e.address, (_NO_COUNTS, "", 0)
        )
        merged[e.address] = (
            (
                calls + e.total_calls,
                failures + e.failures,
                ejections + e.times_ejected,
                outruns + e.outruns,
            ),
            state or str(e.state),
            in_flight + e.in_flight,
        )
    return merged


@dataclass(slots=True)
class _Window:
    """What the previous snapshot saw, so the next one can report differences."""

    time: float
    done: int = 0
    failed: int = 0
    retries: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    hedges: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Operations:
    """Counts and latency per operation name."""

    def __init__(self, names: Iterable[str]) -> None:
        self._histograms = {name: LatencyHistogram() for name in names}
        self._failed: Counter[str] = Counter()

    def record(self, name: str, latency: float, failed: bool) -> None:
        self._histograms.setdefault(name, LatencyHistogram()).record(latency)
        if failed:
            self._failed[name] += 1

    def rows(self) -> dict[str, OperationRow]:
        return {
            name: OperationRow(
                calls=h.count,
                ok=h.count - self._failed[name],
                failed=self._failed[name],
                latency_ms=h.summary_ms(),
            )
            for name, h in self._histograms.items()
        }


class _Run:
    """Counters of one run. Changed only by the event loop's one thread, between awaits."""

    def __init__(
        self,
        config: LoadConfig,
        clock: Callable[[], float],
        baseline: ClientInfo,
        operations: Iterable[str] = (),
    ) -> None:
        self.config = config
        self._clock = clock
        self.started = clock()
        self.deadline = self.started + config.duration
        self.histogram = LatencyHistogram()
        self.operations = _Operations(operations)
        self.errors: Counter[str] = Counter()
        self.claimed = 0
        self.ok = 0
        self.failed = 0
        self.in_flight = 0
        self.late = 0
        self.ended: float | None = None
        self.stopped = False
        self._base_retries = baseline.retries
        self._base_hedges = (baseline.hedges, baseline.hedges_won)
        self._endpoints = _Endpoints(baseline)
        self._window = _Window(time=self.started)
        #: The window before ``_window``: what a final snapshot with a short tail reports from.
        self._previous: _Window | None = None

    def now(self) -> float:
        return self._clock()

    def claim(self) -> float | None:
        """Claim the next operation; its due time, or None when the run is over.

        Closed loop: due now. Open loop: due at ``started + i / rps``; a slot due
        at or after the deadline is never handed out.
        """
        now = self._clock()
        if self.stopped or self.claimed >= self.config.max_calls or now >= self.deadline:
            return None
        due = now
        if self.config.rps > 0:
            due = self.started + self.claimed / self.config.rps
            if due >= self.deadline:
                return None
        self.claimed += 1
        return due

    def record(self, latency: float, failure: BaseException | None, operation: str = "") -> None:
        latency = max(0.0, latency)
        self.histogram.record(latency)
        self._window.histogram.record(latency)
        if operation:
            self.operations.record(operation, latency, failure is not None)
        if failure is None:
            self.ok += 1
        else:
            self.failed += 1
            self.errors[error_code(failure)] += 1

    def elapsed(self) -> float:
        end = self.ended if self.ended is not None else self._clock()
        return max(0.0, end - self.started)

    def _retries(self, stats: ClientInfo) -> int:
        return max(0, stats.retries - self._base_retries)

    def _hedges(self, stats: ClientInfo) -> tuple[int, int]:
        """(hedges sent, hedges that won) since the run started."""
        sent, won = self._base_hedges
        return max(0, stats.hedges - sent), max(0, stats.hedges_won - won)

    def _rows(self, rate: Callable[[str, _Tally], float]) -> list[EndpointRow]:
        total = self._endpoints.total_calls()
        return [
            EndpointRow(
                address=address,
                state=tally.state,
                in_flight=tally.in_flight,
                calls=tally.calls,
                failures=tally.failures,
                share=tally.calls / total if total else 0.0,
                rate=rate(address, tally),
                ejections=tally.ejections,
                outruns=tally.outruns,
            )
            for address, tally in self._endpoints.items()
        ]

    def snapshot(self, stats: ClientInfo, *, final: bool = False) -> LoadSnapshot:
        """The run now; starts the next window (call it once per tick, and once at the end).

        ``final``: the run ended; rates over a tail shorter than a tick reach
        back a tick further (see :class:`LoadSnapshot`).
        """
        now = self._clock()
        self._endpoints.observe(stats)
        last, done, retries = self._window, self.ok + self.failed, self._retries(stats)
        base = last  # What the rates are taken since.
        if final and self._previous is not None and now - last.time < self.config.tick_interval:
            base = self._previous
        span = now - base.time

        def rate(address: str, tally: _Tally) -> float:
            return (tally.calls - base.calls.get(address, 0)) / span if span > 0 else 0.0

        rows = self._rows(rate)
        hedges, hedges_won = self._hedges(stats)
        calls = {r.address: r.calls for r in rows}
        self._previous = self._window
        self._window = _Window(now, done, self.failed, retries, calls, hedges=hedges)
        elapsed = self.elapsed()
        return LoadSnapshot(
            elapsed=elapsed,
            remaining=max(0.0, self.deadline - now) if self.ended is None else 0.0,
            calls=done,
            ok=self.ok,
            failed=self.failed,
            in_flight=self.in_flight,
            late=self.late,
            retries=retries,
            rps=(done - base.done) / span if span > 0 else 0.0,
            rps_overall=done / elapsed if elapsed > 0 else 0.0,
            target_rps=self.config.rps,
            errors_by_code=dict(self.errors),
            latency_ms=self.histogram.summary_ms(),
            endpoints=tuple(r for r in rows if self._endpoints.present(r.address)),
            window_latency_ms=last.histogram.summary_ms(),
            window_failed=self.failed - last.failed,
            window_retries=max(0, retries - last.retries),
            hedges=hedges,
            hedges_won=hedges_won,
            window_hedges=max(0, hedges - last.hedges),
        )

    def summary(self, stats: ClientInfo, seeded: int, seed: int | None) -> LoadSummary:
        self._endpoints.observe(stats)
        elapsed = self.elapsed()
        done = self.ok + self.failed

        def average(_address: str, tally: _Tally) -> float:
            return tally.calls / elapsed if elapsed > 0 else 0.0

        return LoadSummary(
            calls=done,
            ok=self.ok,
            failed=self.failed,
            late=self.late,
            retries=self._retries(stats),
            seeded=seeded,
            duration=elapsed,
            rps=done / elapsed if elapsed > 0 else 0.0,
            errors_by_code=dict(self.errors),
            latency_ms=self.histogram.summary_ms(),
            per_endpoint={row.address: row for row in self._rows(average)},
            policy=self.config.policy,
            config=self.config,
            seed=seed,
            per_operation=self.operations.rows(),
            interrupted=self.stopped,
            hedges=self._hedges(stats)[0],
            hedges_won=self._hedges(stats)[1],
        )


async def _worker(
    run: _Run, workload: _Workload, sleep: Callable[[float], Awaitable[None]]
) -> None:
    while (due := run.claim()) is not None:
        wait = due - run.now()
        if wait > 0:
            await sleep(wait)
        elif -wait > run.config.late_after and run.config.rps > 0:
            run.late += 1
        await _timed(run, *workload.choose())


async def _timed(run: _Run, name: str, operation: Callable[[], Awaitable[None]]) -> None:
    run.in_flight += 1
    started = run.now()
    failure: BaseException | None = None
    try:
        await operation()
    except Exception as exc:  # every failure counts (see error_code); cancellation passes
        failure = exc
    finally:
        run.in_flight -= 1
    run.record(run.now() - started, failure, name)


async def _tick(
    run: _Run,
    client: LoadClient,
    on_tick: Callable[[LoadSnapshot], None],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    while True:
        await sleep(run.config.tick_interval)
        on_tick(run.snapshot(client.stats()))


async def _drive(
    run: _Run,
    workload: _Workload,
    sleep: Callable[[float], Awaitable[None]],
    stop: asyncio.Event | None,
) -> None:
    workers = [
        asyncio.create_task(_worker(run, workload, sleep), name=f"load-worker-{n}")
        for n in range(run.config.concurrency)
    ]
    finished = asyncio.create_task(asyncio.wait(workers), name="load-workers")
    watched: list[asyncio.Task[Any]] = [finished]
    if stop is not None:
        watched.append(asyncio.create_task(stop.wait(), name="load-stop"))
    bound = run.config.duration + run.config.grace
    try:
        await asyncio.wait(watched, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        run.stopped = stop is not None and stop.is_set() and not finished.done()
    finally:
        # Workers still running past the bound, or at a stop, are cancelled, not counted.
        for task in (*workers, *watched):
            task.cancel()
        await asyncio.gather(*workers, *watched, return_exceptions=True)
    run.ended = run.now()


def _draw_seed() -> int:
    """A fresh seed from the system's entropy, small enough to type on a command line."""
    return random.SystemRandom().randrange(2**32)


async def run_load(
    client: LoadClient,
    config: LoadConfig,
    on_tick: Callable[[LoadSnapshot], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    stop: asyncio.Event | None = None,
) -> LoadSummary:
    """Run one bounded load against ``client`` and summarize it.

    To end a run early and still get its summary, set ``stop`` (the CLI does so
    on Ctrl-C): no operation starts after that, the running ones are cancelled
    (and not counted), and the summary of what finished comes back with
    ``interrupted=True``. Cancelling the task that runs ``run_load`` instead
    raises ``CancelledError`` as usual, with no summary.

    Args:
        client: A ``UserClient`` (or anything with the :class:`LoadClient` methods).
        config: What to run, and its bounds. Without ``config.seed`` a seed is
            drawn; it is in the summary (``seed`` and ``config.seed``).
        on_tick: Called with a snapshot every ``config.tick_interval`` seconds
            and once at the end; it must not block. The snapshots are also when
            per-address counts are folded in: without ``on_tick``, an endpoint the
            client replaced during the run keeps only the new object's counts.
        clock: Monotonic seconds (pacing, elapsed time, latency); a seam for tests.
        sleep: Awaitable sleep used for pacing and ticks; a seam for tests.
        rng: Random source for the mix and ids (default: seeded with the seed).
        stop: Set it to end the run early (see above).

    Returns:
        The summary: ``calls == ok + failed``; per-endpoint calls count the
        attempts each endpoint served during the run (seeding left out).

    Raises:
        MeshError: Seeding failed (the run itself counts failures instead of raising).
    """
    seed = config.seed if config.seed is not None or rng is not None else _draw_seed()
    config = replace(config, seed=seed)
    workload = _Workload(client, config, rng or random.Random(seed))
    seeded = await workload.seed(config.seed_users)
    run = _Run(config, clock, client.stats(), workload.operations)
    ticker = None
    if on_tick is not None:
        ticker = asyncio.create_task(_tick(run, client, on_tick, sleep), name="load-ticker")
    try:
        await _drive(run, workload, sleep, stop)
    finally:
        if ticker is not None:
            await cancel_and_wait(ticker)
    if on_tick is not None:
        on_tick(run.snapshot(client.stats(), final=True))
    return run.summary(client.stats(), seeded, seed)
