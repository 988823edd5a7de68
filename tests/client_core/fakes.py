"""Test doubles for the seams of the client core: clock, random source, candidates, errors.

Only seams are faked; grpc errors are real ``grpc.aio.AioRpcError`` objects.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from client import testing
from client._retry import Attempt, AttemptFailed


class FakeClock(testing.FakeClock):
    """``client.testing.FakeClock`` in virtual time: every sleep moves it at once."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start, auto_advance=True)


class RecordingRandom(random.Random):
    """A seeded Random that records every ``random()`` result, in order."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.draws: list[float] = []

    def random(self) -> float:
        value = super().random()
        self.draws.append(value)
        return value


@dataclass(eq=False)
class FakeCandidate:
    """A tiny endpoint: keeps its in-flight counter the way the real Endpoint does.

    The counter lives here, never in the picker: ``acquire`` when a call starts
    on this endpoint, ``release`` when it ends; releasing more than acquired is
    a bug and fails loudly.
    """

    name: str
    load: int = 0
    available: bool = True

    @property
    def in_flight(self) -> int:
        return self.load

    def is_available(self) -> bool:
        return self.available

    def acquire(self) -> None:
        self.load += 1

    def release(self) -> None:
        assert self.load > 0, f"{self.name}: release without acquire"
        self.load -= 1

    def __repr__(self) -> str:
        state = "up" if self.available else "down"
        return f"<{self.name} {state} in_flight={self.load}>"


def rpc_error(
    code: grpc.StatusCode,
    details: str = "",
    trailing: Iterable[tuple[str, str | bytes]] = (),
) -> grpc.aio.AioRpcError:
    """A real AioRpcError, as grpc.aio raises it for a failed call."""
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing),
        details,
        None,
    )


Outcome = BaseException | str
"""What one scripted attempt does: raise the exception, or return the string."""


@dataclass
class ScriptedCall:
    """An attempt callable that plays a script, one outcome per attempt.

    ``duration`` seconds pass on ``clock`` during each attempt; an attempt
    whose timeout is shorter than that advances only to the timeout and fails
    with DEADLINE_EXCEEDED, as a real call would.
    """

    clock: FakeClock
    script: Sequence[Outcome]
    duration: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)

    async def __call__(self, attempt: Attempt) -> str:
        self.attempts.append(attempt)
        self.started_at.append(self.clock())
        outcome = self.script[min(len(self.attempts), len(self.script)) - 1]
        if attempt.timeout is not None and attempt.timeout < self.duration:
            self.clock.advance(attempt.timeout)
            outcome = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        else:
            self.clock.advance(self.duration)
        if isinstance(outcome, BaseException):
            self.raised.append(outcome)
            raise outcome
        return outcome


def failing_on(
    endpoints: Sequence[object], error: grpc.RpcError
) -> Callable[[Attempt], Awaitable[str]]:
    """An attempt callable that fails on ``endpoints[number - 1]``, naming it."""

    async def attempt(a: Attempt) -> str:
        raise AttemptFailed(error, endpoints[a.number - 1])

    return attempt
