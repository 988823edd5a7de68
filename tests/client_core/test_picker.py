"""Pickers: preference order, the choice inside a group, fairness, and the in-flight contract."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from client._picker import (
    PICKERS,
    Candidate,
    LeastConnFullPicker,
    LeastConnPicker,
    Picker,
    RandomPicker,
    RoundRobinPicker,
    make_picker,
    preferred_group,
)

from .fakes import FakeCandidate, RecordingRandom
from .strategies import PROPERTY, candidates, candidates_with_exclusions, picker_names, seeds


def rank(endpoint: FakeCandidate, excluded: frozenset[object]) -> int:
    """The preference rank the pickers promise (0 is best)."""
    return (0 if endpoint.available else 2) + (1 if endpoint in excluded else 0)


def fleet(*loads: int) -> list[FakeCandidate]:
    return [FakeCandidate(f"e{i}", load) for i, load in enumerate(loads)]


def tally(picker: Picker, endpoints: list[FakeCandidate], picks: int) -> Counter[str]:
    """How often each endpoint is picked in ``picks`` picks (loads unchanged)."""
    counts: Counter[str] = Counter()
    for _ in range(picks):
        chosen = picker.pick(endpoints)
        assert chosen is not None
        counts[chosen.name] += 1
    return counts


# -- make_picker -------------------------------------------------------------------


def test_pickers_lists_the_five_names() -> None:
    assert PICKERS == ("least_conn", "peak_ewma", "least_conn_full", "round_robin", "random")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("least_conn", LeastConnPicker),
        ("least_conn_full", LeastConnFullPicker),
        ("round_robin", RoundRobinPicker),
        ("random", RandomPicker),
    ],
)
def test_make_picker_builds_the_named_picker(name: str, cls: type) -> None:
    assert type(make_picker(name, random.Random(1))) is cls


def test_make_picker_rejects_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="least_conn") as info:
        make_picker("fastest")
    assert "'fastest'" in str(info.value)
    for name in PICKERS:
        assert name in str(info.value)


def test_fake_candidate_satisfies_the_protocol() -> None:
    assert isinstance(FakeCandidate("e0"), Candidate)


# -- The preference order, for every picker -----------------------------------------


@pytest.mark.parametrize("name", PICKERS)
def test_empty_gives_none(name: str) -> None:
    assert make_picker(name, random.Random(0)).pick([]) is None
    assert make_picker(name, random.Random(0)).pick([], exclude={object()}) is None


@PROPERTY
@given(name=picker_names, seed=seeds, data=candidates_with_exclusions())
def test_pick_comes_from_the_best_preference_group(
    name: str, seed: int, data: tuple[list[FakeCandidate], frozenset[object]]
) -> None:
    """Available > excluded-but-available > unavailable > unavailable-and-excluded."""
    endpoints, excluded = data
    picker = make_picker(name, random.Random(seed))
    for _ in range(5):
        chosen = picker.pick(endpoints, excluded)
        if not endpoints:
            assert chosen is None
            continue
        assert chosen is not None
        assert chosen in endpoints
        assert rank(chosen, excluded) == min(rank(e, excluded) for e in endpoints)


@PROPERTY
@given(name=picker_names, seed=seeds, endpoints=candidates(min_size=1))
def test_pick_only_reads(name: str, seed: int, endpoints: list[FakeCandidate]) -> None:
    before = [(e.load, e.available) for e in endpoints]
    make_picker(name, random.Random(seed)).pick(endpoints, frozenset(endpoints[:1]))
    assert [(e.load, e.available) for e in endpoints] == before


@pytest.mark.parametrize("name", PICKERS)
def test_all_ejected_still_returns_one_preferring_not_excluded(name: str) -> None:
    endpoints = [FakeCandidate(f"e{i}", available=False) for i in range(3)]
    picker = make_picker(name, random.Random(7))
    for _ in range(20):
        assert picker.pick(endpoints, exclude={endpoints[0], endpoints[1]}) is endpoints[2]
    assert picker.pick(endpoints, exclude=set(endpoints)) in endpoints


@pytest.mark.parametrize("name", PICKERS)
def test_excluded_available_beats_unavailable(name: str) -> None:
    up, down = FakeCandidate("up"), FakeCandidate("down", available=False)
    picker = make_picker(name, random.Random(3))
    for _ in range(20):
        assert picker.pick([down, up], exclude={up}) is up


def test_preferred_group_keeps_input_order() -> None:
    a, b, c = FakeCandidate("a"), FakeCandidate("b", available=False), FakeCandidate("c")
    assert preferred_group([c, b, a]) == [c, a]
    assert preferred_group([c, b, a], exclude={a, c}) == [c, a]
    assert preferred_group([b], exclude={b}) == [b]
    assert preferred_group([]) == []


# -- least_conn: power of two choices -------------------------------------------------


def _pair(group: list[FakeCandidate], u: float, v: float) -> tuple[FakeCandidate, FakeCandidate]:
    """The two distinct endpoints that draws ``u`` and ``v`` name (the picker's documented rule)."""
    first, second = int(u * len(group)), int(v * (len(group) - 1))
    if second >= first:
        second += 1
    assert first != second
    return group[first], group[second]


@PROPERTY
@given(seed=seeds, data=candidates_with_exclusions(min_size=1))
def test_least_conn_picks_the_lighter_of_its_two_random_choices(
    seed: int, data: tuple[list[FakeCandidate], frozenset[object]]
) -> None:
    endpoints, excluded = data
    rng = RecordingRandom(seed)
    chosen = LeastConnPicker(rng).pick(endpoints, excluded)
    assert chosen is not None
    draws = list(rng.draws)
    if not excluded and len(endpoints) >= 2:
        # First over every endpoint: the lighter (the first drawn on a tie) is kept
        # when it is available, whatever the other one is.
        a, b = _pair(endpoints, draws.pop(0), draws.pop(0))
        lighter = b if b.in_flight < a.in_flight else a
        if lighter.is_available():
            assert chosen is lighter
            assert draws == []
            return
    group = preferred_group(endpoints, excluded)
    if len(group) == 1:
        assert chosen is group[0]
        assert draws == []  # nothing more to choose, no more randomness used
        return
    a, b = _pair(group, *draws)
    assert chosen in (a, b)
    assert chosen.in_flight == min(a.in_flight, b.in_flight)


def test_least_conn_draws_every_available_pair_as_often() -> None:
    # The fast path draws from every endpoint and falls back when the lighter draw
    # is unavailable: the choice must still be uniform over the available ones.
    endpoints = fleet(0, 0, 0, 0)
    endpoints[3].available = False
    picker = LeastConnPicker(random.Random(7))
    counts = tally(picker, endpoints, 6000)
    assert counts["e3"] == 0
    for name in ("e0", "e1", "e2"):
        assert 1800 < counts[name] < 2200  # a third each, give or take 4.5 sigma


def test_least_conn_asks_one_availability_per_pick_when_the_lighter_is_available() -> None:
    asked: Counter[str] = Counter()

    class Asked(FakeCandidate):
        def is_available(self) -> bool:
            asked[self.name] += 1
            return super().is_available()

    endpoints: list[FakeCandidate] = [
        Asked("e0", load=1),
        Asked("e1", load=9, available=False),
        Asked("e2", load=1),
    ]
    picker = LeastConnPicker(random.Random(3))
    counts = tally(picker, endpoints, 600)
    assert counts["e1"] == 0  # Heavier, and unavailable: never the choice.
    assert sum(asked.values()) == 600  # Only ever the lighter one asked.
    assert asked["e1"] == 0


def test_least_conn_breaks_ties_at_random() -> None:
    endpoints = fleet(3, 3)
    picker = LeastConnPicker(random.Random(11))
    counts = tally(picker, endpoints, 1000)
    assert 400 < counts["e0"] < 600


def test_least_conn_starves_an_overloaded_endpoint() -> None:
    """One endpoint holding many calls gets (almost) no picks; random would give it 1/5."""
    endpoints = fleet(0, 1, 2, 1, 500)
    picker = LeastConnPicker(random.Random(2024))
    counts = tally(picker, endpoints, 10_000)
    assert counts["e4"] <= 10  # two distinct draws: it can only lose
    assert counts["e0"] > counts["e1"] > counts["e2"]


def _simulate(name: str, slow_factor: int, picks: int = 3000) -> Counter[str]:
    """Calls arrive one per tick; each lasts 4 ticks, or 4 * slow_factor on e0."""
    endpoints = fleet(0, 0, 0, 0)
    picker = make_picker(name, random.Random(5))
    ending: dict[int, list[FakeCandidate]] = {}
    counts: Counter[str] = Counter()
    for tick in range(picks):
        for done in ending.pop(tick, []):
            done.release()
        chosen = picker.pick(endpoints)
        assert chosen is not None
        chosen.acquire()
        counts[chosen.name] += 1
        ending.setdefault(tick + 4 * (slow_factor if chosen.name == "e0" else 1), []).append(chosen)
    return counts


def test_least_conn_steers_around_a_slow_endpoint_where_round_robin_cannot() -> None:
    least, robin = _simulate("least_conn", slow_factor=10), _simulate("round_robin", 10)
    assert robin["e0"] == pytest.approx(750, abs=1)  # a fair share, however slow
    assert least["e0"] < 300


# -- least_conn_full -------------------------------------------------------------------


@PROPERTY
@given(seed=seeds, endpoints=candidates(min_size=1))
def test_least_conn_full_picks_a_minimum_of_the_group(
    seed: int, endpoints: list[FakeCandidate]
) -> None:
    chosen = LeastConnFullPicker(random.Random(seed)).pick(endpoints)
    assert chosen is not None
    assert chosen.in_flight == min(e.in_flight for e in preferred_group(endpoints))


def test_least_conn_full_spreads_ties_at_random() -> None:
    endpoints = fleet(2, 1, 1, 1)
    picker = LeastConnFullPicker(random.Random(9))
    counts = tally(picker, endpoints, 900)
    assert set(counts) == {"e1", "e2", "e3"}
    assert min(counts.values()) > 200


# -- round_robin -----------------------------------------------------------------------


@PROPERTY
@given(
    seed=seeds,
    changes=st.lists(
        st.lists(st.booleans(), min_size=1, max_size=6),  # availability of e0..eN
        min_size=1,
        max_size=6,
    ),
)
def test_round_robin_visits_each_available_endpoint_once_per_cycle(
    seed: int, changes: list[list[bool]]
) -> None:
    picker = RoundRobinPicker(random.Random(seed))
    for availability in changes:
        endpoints = [FakeCandidate(f"e{i}", available=up) for i, up in enumerate(availability)]
        group = preferred_group(endpoints)
        for _ in range(2):  # two full cycles after each change of the set
            picked = [picker.pick(endpoints) for _ in group]
            assert sorted(e.name for e in picked if e is not None) == sorted(e.name for e in group)


def test_round_robin_start_is_random() -> None:
    endpoints = fleet(0, 0, 0, 0)
    firsts = {
        next(iter(tally(RoundRobinPicker(random.Random(s)), endpoints, 1))) for s in range(40)
    }
    assert len(firsts) > 1


def test_round_robin_skips_an_endpoint_ejected_midway() -> None:
    endpoints = fleet(0, 0, 0)
    picker = RoundRobinPicker(random.Random(0))
    endpoints[1].available = False
    assert tally(picker, endpoints, 6) == {"e0": 3, "e2": 3}


# -- random ----------------------------------------------------------------------------


def test_random_reaches_every_endpoint_of_the_group() -> None:
    endpoints = fleet(0, 9, 0)
    endpoints[2].available = False
    picker = RandomPicker(random.Random(4))
    counts = tally(picker, endpoints, 600)
    assert set(counts) == {"e0", "e1"}
    assert min(counts.values()) > 200


@pytest.mark.parametrize("name", PICKERS)
def test_a_seeded_picker_is_reproducible(name: str) -> None:
    endpoints = fleet(1, 0, 2, 0, 1)

    def run() -> list[str]:
        return list(tally(make_picker(name, random.Random(42)), endpoints, 30).elements())

    assert run() == run()


# -- The in-flight contract: the endpoint counts, the picker reads ---------------------


class InFlightMachine(RuleBasedStateMachine):
    """Random pick/acquire/release/eject sequences never drive a counter below zero.

    Mirrors how the pool uses a picker: pick, acquire on the chosen endpoint,
    and release that same endpoint when the call ends (in any order).
    """

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.endpoints = fleet(0, 0, 0, 0)
        self.picker = make_picker("least_conn", random.Random(0))
        self.open: Counter[str] = Counter()

    @rule(name=picker_names, seed=seeds)
    def switch_picker(self, name: str, seed: int) -> None:
        self.picker = make_picker(name, random.Random(seed))

    @rule(target=calls)
    def start_call(self) -> FakeCandidate:
        chosen = self.picker.pick(self.endpoints)
        assert chosen is not None
        chosen.acquire()
        self.open[chosen.name] += 1
        return chosen

    @rule(call=consumes(calls))
    def end_call(self, call: FakeCandidate) -> None:
        call.release()
        self.open[call.name] -= 1

    @precondition(lambda self: any(e.available for e in self.endpoints))
    @rule(index=st.integers(min_value=0, max_value=3), up=st.booleans())
    def set_availability(self, index: int, up: bool) -> None:
        self.endpoints[index].available = up

    @invariant()
    def counters_match_open_calls_and_never_go_negative(self) -> None:
        for endpoint in self.endpoints:
            assert endpoint.in_flight >= 0
            assert endpoint.in_flight == self.open[endpoint.name]


TestInFlight = InFlightMachine.TestCase
TestInFlight.settings = settings(PROPERTY, max_examples=50, stateful_step_count=40)


def test_fake_candidate_refuses_a_release_without_acquire() -> None:
    with pytest.raises(AssertionError, match="release without acquire"):
        FakeCandidate("e0").release()
