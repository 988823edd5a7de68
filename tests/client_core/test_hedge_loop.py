"""The hedging loop (gRFC A6 semantics) on a fake clock: exact timing, winners, fatal codes, budget.

Copies are scripted: each one waits for the test to answer it (or to advance
the clock past its timeout), so every ordering is deterministic and no test
waits for real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from client._hedge import Copy, HedgeTimer, HedgingPolicy, PickNow, Won, call_with_hedging
from client._retry import PUSHBACK_KEY, AttemptFailed, RetryBudget
from tests.client_core.fakes import rpc_error

pytestmark = pytest.mark.timeout(10)

DELAY = 0.05
UNAVAILABLE = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")


class FakeTimer:
    """A clock whose ``sleep`` waits until the test advances time past the wake-up."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking every sleeper due on the way, in order."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target + 1e-12:
            due, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = target
        await settle()


def offsets(replicas: Replicas) -> list[float]:
    """When each copy went, in seconds after the call began (rounded off float noise)."""
    return [round(s.at - 100.0, 9) for s in replicas.sent]


async def settle() -> None:
    """Let every ready task run until the loop is quiet again."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class Sent:
    endpoint: str
    copy: Copy
    at: float
    answer: asyncio.Future[str]
    cancelled: bool = False
    #: The task the copy ran in.
    task: asyncio.Task[object] | None = None


@dataclass
class Replicas:
    """Scripted endpoints: ``pick`` prefers unused ones; ``run`` waits for the test's answer."""

    clock: FakeTimer
    names: tuple[str, ...] = ("a", "b", "c")
    sent: list[Sent] = field(default_factory=list)
    picks: list[frozenset[object]] = field(default_factory=list)
    #: What ``pick`` returns once every endpoint was used (a picker's "excluded" group).
    fallback: str = "a"
    #: Called as a copy unwinds from its cancellation, with the copy's number.
    on_cancel: Callable[[int], object] | None = None

    async def pick(self, used: frozenset[object], max_wait: float | None) -> object:
        self.picks.append(used)
        fresh = [n for n in self.names if n not in used]
        if not self.names:
            raise AttemptFailed(UNAVAILABLE, None)
        return fresh[0] if fresh else self.fallback

    async def run(self, endpoint: object, copy: Copy) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        sent = Sent(str(endpoint), copy, self.clock(), answer, task=asyncio.current_task())
        self.sent.append(sent)
        try:
            return await answer
        except asyncio.CancelledError:
            sent.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel(copy.number)
            raise

    def reply(self, number: int, value: str | BaseException) -> None:
        answer = self.sent[number - 1].answer
        if isinstance(value, BaseException):
            answer.set_exception(value)
        else:
            answer.set_result(value)


async def start(
    replicas: Replicas,
    policy: HedgingPolicy | None = None,
    *,
    budget: RetryBudget | None = None,
    deadline: float | None = None,
    per_attempt_timeout: float | None = None,
    hedges: list[int] | None = None,
    delay: float = DELAY,
    timer: HedgeTimer | None = None,
    pick_now: PickNow | None = None,
) -> asyncio.Task[Won[str]]:
    call: Awaitable[Won[str]] = call_with_hedging(
        replicas.pick,
        replicas.run,
        policy=policy or HedgingPolicy(max_attempts=3, delay=DELAY),
        delay=delay,
        budget=budget,
        deadline=deadline,
        per_attempt_timeout=per_attempt_timeout,
        clock=replicas.clock,
        sleep=replicas.clock.sleep,
        on_hedge=None if hedges is None else hedges.append,
        timer=timer,
        pick_now=pick_now,
    )
    task = asyncio.ensure_future(call)
    await settle()  # the first copy is out
    return task


@pytest.fixture
def replicas() -> Replicas:
    return Replicas(FakeTimer())


async def test_the_second_copy_goes_exactly_at_the_delay_and_the_third_at_twice(
    replicas: Replicas,
) -> None:
    hedges: list[int] = []
    task = await start(replicas, hedges=hedges)
    await replicas.clock.advance(DELAY - 1e-6)
    assert [s.endpoint for s in replicas.sent] == ["a"]  # not before the delay
    await replicas.clock.advance(1e-6)
    assert offsets(replicas) == [0.0, DELAY]
    await replicas.clock.advance(DELAY)
    assert offsets(replicas) == [0.0, DELAY, 2 * DELAY]
    assert [s.endpoint for s in replicas.sent] == ["a", "b", "c"]  # a different one each time
    assert hedges == [2, 3]
    await replicas.clock.advance(10 * DELAY)
    assert len(replicas.sent) == 3  # at most max_attempts copies
    replicas.reply(2, "from b")
    assert await task == Won("from b", 2)
    assert [s.cancelled for s in replicas.sent] == [True, False, True]
    # Only the copy sent before the winner was outrun: the one sent after says nothing.
    assert [s.copy.outrun for s in replicas.sent] == [True, False, False]


async def test_an_answer_before_the_delay_sends_no_hedge(replicas: Replicas) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY / 2)
    replicas.reply(1, "quick")
    assert await task == Won("quick", 1)
    await replicas.clock.advance(DELAY * 2)
    assert len(replicas.sent) == 1


async def test_a_fatal_status_ends_the_call_at_once_and_cancels_the_rest(
    replicas: Replicas,
) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    not_found = rpc_error(grpc.StatusCode.NOT_FOUND, "no such user")
    replicas.reply(2, AttemptFailed(not_found, "b"))
    with pytest.raises(grpc.RpcError) as raised:
        await task
    assert raised.value is not_found
    assert replicas.sent[0].cancelled
    assert len(replicas.sent) == 2  # no third copy after a fatal status


async def test_a_non_fatal_status_sends_the_next_copy_at_once_and_lets_the_others_run(
    replicas: Replicas,
) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    replicas.reply(2, AttemptFailed(UNAVAILABLE, "b"))
    await settle()
    # The third copy went right away, not a delay later; the first still runs.
    assert [s.endpoint for s in replicas.sent] == ["a", "b", "c"]
    assert offsets(replicas) == [0.0, DELAY, DELAY]
    assert not replicas.sent[0].cancelled
    replicas.reply(1, "slow a")
    assert await task == Won("slow a", 1)
    assert replicas.sent[2].cancelled


async def test_every_copy_failing_non_fatally_raises_the_last_error(replicas: Replicas) -> None:
    task = await start(replicas)
    last = rpc_error(grpc.StatusCode.UNAVAILABLE, "the last one")
    for number, error in ((1, UNAVAILABLE), (2, UNAVAILABLE), (3, last)):
        await settle()
        replicas.reply(number, AttemptFailed(error, replicas.sent[number - 1].endpoint))
    with pytest.raises(grpc.RpcError) as raised:
        await task
    assert raised.value is last
    assert len(replicas.sent) == 3


async def test_an_empty_budget_sends_no_hedge(replicas: Replicas) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=replicas.clock)
    task = await start(replicas, budget=budget)
    await replicas.clock.advance(5 * DELAY)
    assert len(replicas.sent) == 1
    # No hedger was started either: nothing picked an endpoint for a hedge that could not go.
    assert replicas.picks == [frozenset()]
    replicas.reply(1, "alone")
    assert await task == Won("alone", 1)


async def test_after_an_empty_budget_at_the_delay_a_non_fatal_failure_ends_the_call(
    replicas: Replicas,
) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=replicas.clock)
    task = await start(replicas, budget=budget)
    await replicas.clock.advance(2 * DELAY)
    replicas.reply(1, AttemptFailed(UNAVAILABLE, "a"))
    with pytest.raises(grpc.RpcError) as raised:
        await task
    assert raised.value is UNAVAILABLE  # no token for another copy, then or later
    assert len(replicas.sent) == 1


async def test_hedges_spend_the_retry_budget_one_token_each(replicas: Replicas) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, clock=replicas.clock)
    task = await start(replicas, budget=budget)
    await replicas.clock.advance(2 * DELAY)
    # One token (the floor's one second): the second copy went, the third did not.
    assert len(replicas.sent) == 2
    assert budget.available < 1
    replicas.reply(2, "b")
    assert (await task).number == 2


async def test_a_valid_pushback_delays_the_next_copy_by_its_value(replicas: Replicas) -> None:
    task = await start(replicas)
    pushed = rpc_error(grpc.StatusCode.UNAVAILABLE, "busy", trailing=[(PUSHBACK_KEY, "200")])
    replicas.reply(1, AttemptFailed(pushed, "a"))
    await replicas.clock.advance(0.2 - 1e-6)
    assert len(replicas.sent) == 1  # neither at once nor after the hedge delay
    await replicas.clock.advance(1e-6)
    assert offsets(replicas) == [0.0, 0.2]
    replicas.reply(2, "b")
    assert (await task).number == 2


async def test_a_negative_pushback_stops_further_hedges(replicas: Replicas) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    stop = rpc_error(grpc.StatusCode.UNAVAILABLE, "go away", trailing=[(PUSHBACK_KEY, "-1")])
    replicas.reply(2, AttemptFailed(stop, "b"))
    await replicas.clock.advance(10 * DELAY)
    assert len(replicas.sent) == 2  # no third copy, and the first still runs
    assert not replicas.sent[0].cancelled
    replicas.reply(1, "a at last")
    assert await task == Won("a at last", 1)


async def test_no_hedge_while_the_only_other_endpoints_have_a_copy_in_flight() -> None:
    replicas = Replicas(FakeTimer(), names=("a", "b"))
    task = await start(replicas)
    await replicas.clock.advance(5 * DELAY)
    assert [s.endpoint for s in replicas.sent] == ["a", "b"]
    assert replicas.picks[-1] == {"a", "b"}  # it asked, and got one in flight: not sent
    # Once b failed, a copy may go to b again: nothing of this call runs there now.
    replicas.fallback = "b"
    replicas.reply(2, AttemptFailed(UNAVAILABLE, "b"))
    await settle()
    assert [s.endpoint for s in replicas.sent] == ["a", "b", "b"]
    replicas.reply(3, "b again")
    assert (await task).number == 3
    assert replicas.sent[0].cancelled


async def test_no_copy_starts_past_the_deadline_and_timeouts_end_at_it(
    replicas: Replicas,
) -> None:
    task = await start(replicas, deadline=100.0 + 1.5 * DELAY)
    await replicas.clock.advance(DELAY)
    assert [s.copy.timeout for s in replicas.sent] == [
        pytest.approx(1.5 * DELAY),
        pytest.approx(0.5 * DELAY),
    ]
    await replicas.clock.advance(DELAY)  # the third copy would be due after the deadline
    assert len(replicas.sent) == 2
    expired = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    replicas.reply(1, AttemptFailed(expired, "a"))
    with pytest.raises(grpc.RpcError) as raised:
        await task
    assert raised.value is expired  # the call's own deadline is fatal


async def test_a_copy_cut_by_its_attempt_timeout_is_not_fatal(replicas: Replicas) -> None:
    task = await start(replicas, per_attempt_timeout=0.5)
    assert replicas.sent[0].copy.timeout == 0.5
    await settle()
    expired = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    replicas.reply(1, AttemptFailed(expired, "a"))
    await settle()
    assert len(replicas.sent) == 2  # the next copy at once
    replicas.reply(2, "b")
    assert (await task).number == 2


async def test_a_deadline_already_passed_sends_nothing(replicas: Replicas) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        await (await start(replicas, deadline=99.0))
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert replicas.sent == []


async def test_no_endpoint_at_all_fails_with_the_pick_error() -> None:
    replicas = Replicas(FakeTimer(), names=())
    with pytest.raises(grpc.RpcError) as raised:
        await (await start(replicas))
    assert raised.value is UNAVAILABLE


async def test_the_caller_cancelling_cancels_every_copy(replicas: Replicas) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.cancelled for s in replicas.sent] == [True, True]
    assert all(s.copy.lost for s in replicas.sent)


async def test_the_losers_are_marked_lost_before_they_are_cancelled(replicas: Replicas) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    replicas.reply(1, "a")
    await task
    assert [s.copy.lost for s in replicas.sent] == [False, True]
    assert [s.copy.number for s in replicas.sent] == [1, 2]


async def test_a_bug_in_a_copy_propagates_unretried(replicas: Replicas) -> None:
    task = await start(replicas)
    replicas.reply(1, RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        await task
    assert len(replicas.sent) == 1


async def test_one_attempt_sends_no_hedge(replicas: Replicas) -> None:
    task = await start(replicas, HedgingPolicy(max_attempts=1, delay=DELAY))
    await replicas.clock.advance(math.pi)
    assert len(replicas.sent) == 1
    replicas.reply(1, "only")
    assert await task == Won("only", 1)


async def test_a_copy_that_answered_ok_in_the_same_instant_is_discarded(
    replicas: Replicas,
) -> None:
    discarded: list[str] = []

    async def discard(value: str) -> None:
        discarded.append(value)

    task = asyncio.ensure_future(
        call_with_hedging(
            replicas.pick,
            replicas.run,
            policy=HedgingPolicy(delay=DELAY),
            delay=DELAY,
            budget=None,
            deadline=None,
            clock=replicas.clock,
            sleep=replicas.clock.sleep,
            discard=discard,
        )
    )
    await replicas.clock.advance(DELAY)
    replicas.reply(1, "first")
    replicas.reply(2, "second")  # both done before the loop looks
    won = await task
    assert discarded == ["second" if won.number == 1 else "first"]


async def test_an_infinite_delay_sends_no_hedge_but_follows_a_failure_at_once(
    replicas: Replicas,
) -> None:
    task = await start(replicas, HedgingPolicy(delay=DELAY), delay=math.inf)
    await replicas.clock.advance(1000.0)
    assert len(replicas.sent) == 1  # overload everywhere: no hedge
    replicas.reply(1, AttemptFailed(UNAVAILABLE, "a"))
    await settle()
    assert len(replicas.sent) == 2  # but a failure is still followed by the next copy
    replicas.reply(2, "b")
    assert (await task).number == 2


async def test_the_first_copy_runs_in_the_callers_own_task(replicas: Replicas) -> None:
    # Nearly every call ends within the delay: its one copy costs no task of its own.
    task = await start(replicas)
    assert replicas.sent[0].task is task
    await replicas.clock.advance(DELAY)
    assert replicas.sent[1].task is not task  # a hedge runs beside it
    replicas.reply(1, "a")
    assert await task == Won("a", 1)
    assert replicas.sent[1].cancelled


async def test_the_first_copy_failing_after_the_delay_lets_the_hedge_run(
    replicas: Replicas,
) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    replicas.reply(1, AttemptFailed(UNAVAILABLE, "a"))
    await settle()
    # The third copy went at once (non-fatal); the second still runs.
    assert offsets(replicas) == [0.0, DELAY, DELAY]
    assert not replicas.sent[1].cancelled
    replicas.reply(2, "b")
    assert await task == Won("b", 2)
    assert replicas.sent[2].cancelled


@pytest.mark.parametrize(
    "failure",
    [
        AttemptFailed(rpc_error(grpc.StatusCode.NOT_FOUND, "no such user"), "a"),
        RuntimeError("a bug in the first copy"),
    ],
)
async def test_the_first_copy_ending_the_call_after_the_delay_cancels_the_hedge(
    replicas: Replicas, failure: Exception
) -> None:
    task = await start(replicas)
    await replicas.clock.advance(DELAY)
    replicas.reply(1, failure)
    with pytest.raises((grpc.RpcError, RuntimeError)):
        await task
    assert replicas.sent[1].cancelled
    assert not task.cancelled()


async def test_the_caller_cancelling_as_the_first_copy_loses_still_cancels_the_call(
    replicas: Replicas,
) -> None:
    task = await start(replicas)
    hedger_done: list[bool] = []

    def caller_gives_up(number: int) -> None:
        # The hedge won and the first copy is unwinding from the hedger's cancel:
        # the caller's own cancel arrives in that same stretch.
        if number == 1:
            task.cancel()
            hedger_done.append(all(s.task is None or s.task.done() for s in replicas.sent[1:]))

    replicas.on_cancel = caller_gives_up
    await replicas.clock.advance(DELAY)
    replicas.reply(2, "b")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert replicas.sent[0].cancelled
    assert hedger_done == [True]  # the winner had ended before the first copy was cancelled


async def test_a_pick_that_needs_no_wait_is_asked_first_and_a_none_falls_back_to_the_wait(
    replicas: Replicas,
) -> None:
    asked: list[frozenset[object]] = []

    def pick_now(used: frozenset[object]) -> object | None:
        asked.append(used)
        return "b" if len(asked) == 1 else None  # The second call: not resolved yet.

    policy = HedgingPolicy(max_attempts=2, delay=DELAY)
    first = await start(replicas, policy, pick_now=pick_now)
    assert [s.endpoint for s in replicas.sent] == ["b"]
    assert replicas.picks == []  # The waiting pick was never awaited.
    replicas.reply(1, "from b")
    assert await first == Won("from b", 1)
    second = await start(replicas, policy, pick_now=pick_now)
    assert [s.endpoint for s in replicas.sent] == ["b", "a"]  # From the waiting pick.
    assert replicas.picks == [frozenset()]
    assert asked == [frozenset(), frozenset()]
    replicas.reply(2, "from a")
    assert await second == Won("from a", 1)
