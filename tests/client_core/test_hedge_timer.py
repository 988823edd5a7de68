"""The timer that hedged calls share (:class:`client._hedge.HedgeTimer`), on a fake clock.

Every call's first copy is an entry in one timer; these tests hold it to the
same exact timing as a timer per call: each hedge at its own call's delay,
whatever order the entries came in, none for a call that answered, none after
``close``. One test runs on the event loop's own clock, with real time.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import time
import weakref

import pytest

from client._hedge import Copy, HedgeTimer, HedgingPolicy, Won, call_with_hedging
from tests.client_core.test_hedge_loop import (
    DELAY,
    UNAVAILABLE,
    FakeTimer,
    Replicas,
    settle,
    start,
)

pytestmark = pytest.mark.timeout(10)


def shared(clock: FakeTimer) -> HedgeTimer:
    return HedgeTimer(clock, clock.sleep)


def when(replicas: Replicas) -> list[tuple[str, float]]:
    """Each copy's endpoint and when it went, in seconds after 100 (float noise rounded off)."""
    return [(s.endpoint, round(s.at - 100.0, 9)) for s in replicas.sent]


async def test_calls_with_different_delays_each_hedge_at_their_own_time() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    slow, quick = Replicas(clock, names=("a1", "a2")), Replicas(clock, names=("b1", "b2"))
    policy = HedgingPolicy(max_attempts=2, delay=DELAY)
    first = await start(slow, policy, delay=DELAY, timer=timer)  # due at 0.05
    await clock.advance(0.01)
    second = await start(quick, policy, delay=0.02, timer=timer)  # due at 0.03: before the first
    await clock.advance(0.02 - 1e-6)
    assert len(quick.sent) == 1
    await clock.advance(1e-6)
    assert when(quick) == [("b1", 0.01), ("b2", 0.03)]
    assert len(slow.sent) == 1
    await clock.advance(0.02 - 1e-6)
    assert len(slow.sent) == 1
    await clock.advance(1e-6)
    assert when(slow) == [("a1", 0.0), ("a2", DELAY)]
    slow.reply(2, "a2")
    quick.reply(1, "b1")
    assert await first == Won("a2", 2)
    assert await second == Won("b1", 1)
    timer.close()


async def test_entries_due_at_the_same_time_fire_in_the_order_they_came() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    order: list[str] = []
    calls = []
    for name in ("x", "y", "z"):
        replicas = Replicas(clock, names=(f"{name}1", f"{name}2"))
        calls.append((replicas, await start(replicas, hedges=[], timer=timer)))
    await clock.advance(DELAY)
    for replicas, _ in calls:
        assert len(replicas.sent) == 2
        order.append(replicas.sent[1].endpoint)
    assert order == ["x2", "y2", "z2"]
    for replicas, task in calls:
        replicas.reply(1, "done")
        assert (await task).number == 1
    timer.close()


def sleeping(clock: FakeTimer) -> int:
    """Sleeps on ``clock`` still to wake: the timer's wake-up, when one is set."""
    return sum(not future.done() for *_, future in clock._sleepers)


async def test_the_last_waiting_call_answering_drops_the_wake_up_and_every_entry() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    answered = Replicas(clock)
    task = await start(answered, timer=timer)
    assert len(timer) == 1 and sleeping(clock) == 1
    answered.reply(1, "quick")
    assert await task == Won("quick", 1)
    await settle()
    # Nothing waits any more: a wake-up would find nothing to fire (a turn of the
    # event loop for nothing, one per call at one call in flight).
    assert len(timer) == 0 and sleeping(clock) == 0
    await clock.advance(DELAY)
    assert len(answered.sent) == 1
    again = Replicas(clock, names=("g1", "g2"))
    later = await start(again, timer=timer)  # A new wake-up, for the new call's time.
    await clock.advance(DELAY)
    assert when(again) == [("g1", DELAY), ("g2", 2 * DELAY)]
    again.reply(2, "g2")
    assert await later == Won("g2", 2)


async def test_a_call_that_answered_while_another_waits_is_dropped_at_the_wake_up() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    waiting = Replicas(clock, names=("w1", "w2"))
    later = await start(waiting, timer=timer, delay=2 * DELAY)
    answered = Replicas(clock)
    task = await start(answered, timer=timer)  # Due first: the wake-up is set for it.
    answered.reply(1, "quick")
    assert await task == Won("quick", 1)
    assert len(timer) == 2  # Another call waits: the answered entry stays until its time.
    await clock.advance(DELAY)
    assert len(answered.sent) == 1  # Its due time passed: dropped, no hedge.
    assert len(timer) == 1  # Only the call still waiting.
    await clock.advance(DELAY)
    assert when(waiting) == [("w1", 0.0), ("w2", 2 * DELAY)]
    assert len(timer) == 0
    waiting.reply(2, "w2")
    assert await later == Won("w2", 2)


async def test_an_answered_entry_does_not_keep_its_call_alive() -> None:
    clock = FakeTimer()
    timer = shared(clock)

    class Request:
        pass

    request = Request()
    gone = weakref.ref(request)
    replicas = Replicas(clock)
    # Another call still waits, so the timer keeps the answered call's entry a while.
    other = Replicas(clock, names=("o1", "o2"))
    pending = await start(other, timer=timer, delay=2 * DELAY)

    async def run(endpoint: object, copy: Copy, held: Request = request) -> str:
        return "answer"

    won = await call_with_hedging(
        replicas.pick,
        run,
        policy=HedgingPolicy(delay=DELAY),
        delay=DELAY,
        budget=None,
        deadline=None,
        clock=clock,
        sleep=clock.sleep,
        timer=timer,
    )
    assert won == Won("answer", 1)
    del request, run
    gc.collect()
    assert len(timer) == 2
    assert gone() is None  # The request (held by the call's state) is free already.
    other.reply(1, "o1")
    assert await pending == Won("o1", 1)
    assert len(timer) == 0


async def test_close_drops_every_entry_and_its_wake_up() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    replicas = Replicas(clock)
    task = await start(replicas, timer=timer)
    timer.close()
    assert len(timer) == 0
    await clock.advance(10 * DELAY)
    assert len(replicas.sent) == 1  # No hedge: the timer was closed.
    replicas.reply(1, "alone")
    assert await task == Won("alone", 1)


async def test_a_call_without_a_timer_of_its_callers_closes_its_own() -> None:
    clock = FakeTimer()
    replicas = Replicas(clock)
    task = await start(replicas)  # No timer: the call makes its own.
    replicas.reply(1, "quick")
    assert await task == Won("quick", 1)
    await settle()
    # Its wake-up was a task sleeping on the fake clock: closing it cancelled that task.
    assert all(t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task()), (
        asyncio.all_tasks()
    )


async def test_on_the_event_loops_own_clock_a_hedge_goes_after_the_delay() -> None:
    timer = HedgeTimer()  # asyncio.sleep: the loop's own call_later.
    sent: list[tuple[str, float]] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    names = iter(("first", "second"))

    async def pick(used: frozenset[object], max_wait: float | None) -> object:
        return next(names)

    async def run(endpoint: object, copy: Copy) -> str:
        sent.append((str(endpoint), time.monotonic()))
        if endpoint == "second":
            return "second"
        return await gate

    began = time.monotonic()
    won = await call_with_hedging(
        pick,
        run,
        policy=HedgingPolicy(max_attempts=2, delay=0.02),
        delay=0.02,
        budget=None,
        deadline=None,
        timer=timer,
    )
    assert won == Won("second", 2)
    assert [name for name, _ in sent] == ["first", "second"]
    assert sent[1][1] - began >= 0.02
    assert len(timer) == 0
    timer.close()


async def test_no_hedge_goes_where_as_many_first_copies_are_late_as_on_the_calls_own() -> None:
    # Two calls late at once, each on the endpoint the other would hedge to: the slowness
    # is everywhere (a saturated client), and neither hedge goes.
    clock = FakeTimer()
    timer = shared(clock)
    one, two = Replicas(clock, names=("a", "b")), Replicas(clock, names=("b", "a"))
    hedges: list[int] = []
    first = await start(one, hedges=hedges, timer=timer)
    second = await start(two, hedges=hedges, timer=timer)
    await clock.advance(DELAY)
    assert (timer.late("a"), timer.late("b")) == (1, 1)
    assert hedges == []
    assert [len(one.sent), len(two.sent)] == [1, 1]
    one.reply(1, "a")
    two.reply(1, "b")
    assert [await first, await second] == [Won("a", 1), Won("b", 1)]
    assert (timer.late("a"), timer.late("b")) == (0, 0)
    timer.close()


async def test_a_hedge_goes_to_an_endpoint_with_fewer_late_first_copies() -> None:
    # Two calls late on "a" (a stalled replica), one on "b": "b" has fewer, so the hedges
    # of the calls on "a" go there; the one on "b" has nowhere with fewer than its own.
    clock = FakeTimer()
    timer = shared(clock)
    on_a = [Replicas(clock, names=("a", "b")) for _ in range(2)]
    on_b = Replicas(clock, names=("b", "a"))
    tasks = [await start(r, timer=timer) for r in on_a]
    tasks.append(await start(on_b, timer=timer))
    await clock.advance(DELAY)
    assert [len(r.sent) for r in on_a] == [2, 2]
    assert [r.sent[1].endpoint for r in on_a] == ["b", "b"]
    assert len(on_b.sent) == 1
    for replicas in on_a:
        replicas.reply(2, "b")
    on_b.reply(1, "b")
    assert [(await t).number for t in tasks] == [2, 2, 1]
    assert (timer.late("a"), timer.late("b")) == (0, 0)
    timer.close()


async def test_a_held_back_hedge_is_asked_again_a_delay_later() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    one, two = Replicas(clock, names=("a", "b")), Replicas(clock, names=("b", "a"))
    first = await start(one, timer=timer)
    second = await start(two, timer=timer)
    await clock.advance(DELAY)
    assert [len(one.sent), len(two.sent)] == [1, 1]  # Both late at once: no hedge.
    two.reply(1, "b")
    assert await second == Won("b", 1)
    assert timer.late("b") == 0
    await clock.advance(DELAY - 1e-6)
    assert len(one.sent) == 1
    await clock.advance(1e-6)  # A delay after the held-back one: "b" has no late call now.
    assert when(one) == [("a", 0.0), ("b", 2 * DELAY)]
    one.reply(2, "b")
    assert await first == Won("b", 2)
    assert timer.late("a") == 0
    timer.close()


async def test_a_late_copy_failing_non_fatally_is_followed_at_once_wherever_calls_are_late() -> (
    None
):
    clock = FakeTimer()
    timer = shared(clock)
    one, two = Replicas(clock, names=("a", "b")), Replicas(clock, names=("b", "a"))
    first = await start(one, timer=timer)
    second = await start(two, timer=timer)
    await clock.advance(DELAY)
    assert len(one.sent) == 1
    one.reply(1, UNAVAILABLE)  # Rule 3: the next copy goes at once, late calls or not.
    await settle()
    assert [s.endpoint for s in one.sent] == ["a", "b"]
    one.reply(2, "b")
    two.reply(1, "b")
    assert [(await first).number, (await second).number] == [2, 1]
    timer.close()


async def test_an_answer_in_the_same_turn_as_the_hedge_time_is_read_before_any_hedge() -> None:
    clock = FakeTimer()
    timer = shared(clock)
    replicas = Replicas(clock)
    hedges: list[int] = []
    task = await start(replicas, hedges=hedges, timer=timer)
    clock.now += DELAY
    _, _, wake_up = heapq.heappop(clock._sleepers)  # The timer's own sleep.
    wake_up.set_result(None)  # The hedge time comes first in this turn of the loop...
    replicas.reply(1, "first")  # ...and the first copy's answer in the same turn.
    await settle()
    assert await task == Won("first", 1)
    assert hedges == []
    assert len(replicas.sent) == 1
    timer.close()
