"""The latency histogram against exact percentiles: known distributions and properties."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client._histogram import DEFAULT_FLOOR, LatencyHistogram, exact_percentile

QUANTILES = (0.5, 0.95, 0.99, 0.999, 1.0)
latencies = st.lists(
    st.floats(min_value=0.0, max_value=3600.0, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


def _within(estimate: float, exact: float, error: float) -> bool:
    # Below the floor values are not told apart: an absolute error of at most the floor.
    return abs(estimate - exact) <= error * exact + DEFAULT_FLOOR + 1e-12


def _filled(values: list[float], error: float = 0.01) -> LatencyHistogram:
    histogram = LatencyHistogram(relative_error=error)
    for value in values:
        histogram.record(value)
    return histogram


@given(latencies)
def test_percentiles_are_ordered_and_bounded_by_the_max(values: list[float]) -> None:
    histogram = _filled(values)
    p50, p95, p99 = (histogram.percentile(q) for q in (0.5, 0.95, 0.99))
    assert p50 <= p95 <= p99 <= histogram.max == max(values)
    assert histogram.count == len(values)
    assert math.isclose(histogram.mean, sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=200)
@given(latencies, st.sampled_from([0.001, 0.01, 0.05]))
def test_every_percentile_is_within_the_stated_relative_error(
    values: list[float], error: float
) -> None:
    histogram = _filled(values, error)
    for q in QUANTILES:
        assert _within(histogram.percentile(q), exact_percentile(values, q), error), q


@given(latencies, latencies)
def test_merge_equals_recording_everything_in_one(first: list[float], second: list[float]) -> None:
    merged = _filled(first)
    merged.merge(_filled(second))
    together = _filled(first + second)
    assert merged.count == together.count
    for q in QUANTILES:
        assert merged.percentile(q) == together.percentile(q)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.uniform(0.001, 0.2),
        lambda rng: rng.expovariate(1 / 0.02),
        lambda rng: rng.lognormvariate(math.log(0.005), 1.0),
        lambda rng: 0.003 if rng.random() < 0.99 else 2.0,  # a long tail
    ],
    ids=["uniform", "exponential", "lognormal", "bimodal"],
)
def test_known_distributions(draw: object) -> None:
    rng = random.Random(7)
    values = [draw(rng) for _ in range(20_000)]  # type: ignore[operator]
    histogram = _filled(values)
    for q in QUANTILES:
        assert _within(histogram.percentile(q), exact_percentile(values, q), 0.01)


def test_bimodal_tail_shows_in_p99_9_not_p50() -> None:
    histogram = _filled([0.003] * 990 + [2.0] * 10)
    assert histogram.percentile(0.5) == pytest.approx(0.003, rel=0.01)
    assert histogram.percentile(0.999) == pytest.approx(2.0, rel=0.01)


def test_summary_ms_and_empty_histogram() -> None:
    empty = LatencyHistogram()
    assert empty.percentile(0.99) == 0.0
    assert empty.summary_ms().as_dict() == {"p50": 0, "p95": 0, "p99": 0, "max": 0, "mean": 0}
    summary = _filled([0.010] * 100).summary_ms()
    assert summary.p50 == pytest.approx(10.0, rel=0.01)
    assert summary.max == pytest.approx(10.0)
    assert summary.mean == pytest.approx(10.0)


@pytest.mark.parametrize("value", [-0.001, math.inf, math.nan])
def test_refuses_values_it_cannot_count(value: float) -> None:
    with pytest.raises(ValueError, match="cannot record"):
        LatencyHistogram().record(value)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
def test_refuses_quantiles_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        LatencyHistogram().percentile(q)
    with pytest.raises(ValueError, match="quantile"):
        exact_percentile([1.0], q)


def test_refuses_bad_parameters_and_mismatched_merges() -> None:
    with pytest.raises(ValueError, match="relative_error"):
        LatencyHistogram(relative_error=0.5)
    with pytest.raises(ValueError, match="floor"):
        LatencyHistogram(floor=0)
    with pytest.raises(ValueError, match="no values"):
        exact_percentile([], 0.5)
    with pytest.raises(ValueError, match="different buckets"):
        LatencyHistogram(0.01).merge(LatencyHistogram(0.02))


def test_memory_is_bounded_by_range_not_samples() -> None:
    histogram = _filled([random.Random(1).uniform(0.001, 1.0) for _ in range(50_000)])
    # log(1000) / log(1.01 / 0.99) is about 346 buckets for three decades.
    assert "buckets=" in repr(histogram)
    assert len(histogram._buckets) < 400
