"""The peak EWMA latency estimate and the peak_ewma picker, on a fake clock."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._picker import UNKNOWN_LATENCY_PENALTY, PeakEwma, PeakEwmaPicker, make_picker
from client.testing import FakeClock


def test_a_higher_sample_replaces_the_estimate_at_once() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau=5.0, clock=clock)
    assert ewma.value() == 0.0
    ewma.observe(0.010)
    ewma.observe(0.200)
    assert ewma.value() == pytest.approx(0.200)


def test_a_lower_sample_is_blended_by_the_time_since_the_last() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau=5.0, clock=clock)
    ewma.observe(0.200)
    clock.now = 5.0
    ewma.observe(0.010)
    decayed = 0.200 * math.exp(-1)
    weight = math.exp(-1)
    assert ewma.value() == pytest.approx(decayed * weight + 0.010 * (1 - weight))


def test_without_samples_the_estimate_decays_toward_zero() -> None:
    clock = FakeClock()
    ewma = PeakEwma(tau=2.0, clock=clock)
    ewma.observe(1.0)
    clock.now = 2.0
    assert ewma.value() == pytest.approx(math.exp(-1))
    clock.now = 60.0
    assert ewma.value() < 1e-9


def test_tau_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tau"):
        PeakEwma(tau=0)


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30), st.floats(0.0, 100.0))
def test_the_estimate_stays_within_the_samples_range(samples: list[float], later: float) -> None:
    clock = FakeClock()
    ewma = PeakEwma(clock=clock)
    for i, sample in enumerate(samples):
        clock.now = float(i)
        ewma.observe(sample)
    clock.now += later
    assert 0.0 <= ewma.value() <= max(samples) + 1e-12


@dataclass(eq=False)
class Replica:
    in_flight: int = 0
    available: bool = True
    clock: FakeClock = field(default_factory=FakeClock)
    latency: PeakEwma = field(init=False)

    def __post_init__(self) -> None:
        self.latency = PeakEwma(clock=self.clock)

    def is_available(self) -> bool:
        return self.available

    def latency_estimate(self) -> float:
        return self.latency.value()


def test_make_picker_knows_peak_ewma() -> None:
    assert isinstance(make_picker("peak_ewma"), PeakEwmaPicker)


def test_a_slow_replica_loses_against_a_busier_fast_one() -> None:
    fast, slow = Replica(in_flight=5), Replica(in_flight=0)
    fast.latency.observe(0.002)
    slow.latency.observe(0.100)  # cost 0.100 * 1 > 0.002 * 6
    picker = PeakEwmaPicker(random.Random(1))
    assert all(picker.pick([fast, slow]) is fast for _ in range(50))


def test_without_latency_it_compares_in_flight_and_penalises_unknown_busy_ones() -> None:
    idle, busy = Replica(in_flight=0), Replica(in_flight=3)
    picker = PeakEwmaPicker(random.Random(2))
    assert all(picker.pick([idle, busy]) is idle for _ in range(50))
    known = Replica(in_flight=3)
    known.latency.observe(UNKNOWN_LATENCY_PENALTY / 10)
    assert all(picker.pick([known, busy]) is known for _ in range(50))


def test_unavailable_replicas_are_skipped_whatever_their_cost() -> None:
    cheap, fine = Replica(available=False), Replica(in_flight=9)
    fine.latency.observe(1.0)
    picker = PeakEwmaPicker(random.Random(3))
    assert all(picker.pick([cheap, fine]) is fine for _ in range(20))
