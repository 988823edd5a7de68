"""The statistics the client benchmark compares sides by (pure: no cluster)."""

from __future__ import annotations

import math

import pytest

from bench.client._compare import median_interval, medians, paired, paired_ratio


def test_the_paired_ratio_is_the_median_of_each_rounds_own_ratio() -> None:
    # The machine slowed in round 2: both sides cost twice as much there.
    ours = [{"cpu": 110.0}, {"cpu": 220.0}, {"cpu": 105.0}]
    baseline = [{"cpu": 100.0}, {"cpu": 200.0}, {"cpu": 100.0}]
    assert paired_ratio(ours, baseline, "cpu") == pytest.approx(1.1)


def test_the_ratio_is_taken_round_by_round_not_of_the_medians() -> None:
    # Rounds 2 and 3 ran in slow stretches, which hit both sides of the same round.
    ours = [{"cpu": 105.0}, {"cpu": 220.0}, {"cpu": 150.0}]
    baseline = [{"cpu": 100.0}, {"cpu": 200.0}, {"cpu": 160.0}]
    assert paired_ratio(ours, baseline, "cpu") == pytest.approx(1.05)  # 1.05, 1.1, 0.94
    mid = medians({"ours": ours, "baseline": baseline}, ["cpu"])
    assert mid["ours"]["cpu"] / mid["baseline"]["cpu"] == pytest.approx(150 / 160)


def test_a_round_without_a_baseline_figure_has_no_ratio() -> None:
    assert paired_ratio([{"x": 1.0}, {"x": 3.0}], [{"x": 0.0}, {"x": 2.0}], "x") == 1.5
    assert math.isnan(paired_ratio([{"x": 1.0}], [{"x": 0.0}], "x"))


def test_the_sides_must_have_as_many_rounds() -> None:
    with pytest.raises(ValueError, match="longer"):
        paired_ratio([{"x": 1.0}], [{"x": 1.0}, {"x": 2.0}], "x")


def test_the_median_interval_takes_the_order_statistics_of_its_confidence() -> None:
    # 15 rounds: x(4)..x(12) covers the median with 1 - 2 P(B <= 3) = 96.5 %; x(5)..x(11)
    # only 88.2 %, under 90 %.
    low, high, coverage = median_interval([float(v) for v in range(15, 0, -1)], 0.9)
    assert (low, high) == (4.0, 12.0)
    assert coverage == pytest.approx(1 - 2 * (1 + 15 + 105 + 455) / 2**15)
    # 30 rounds at 90 %: x(11)..x(20).
    assert median_interval([float(v) for v in range(1, 31)], 0.9)[:2] == (11.0, 20.0)


def test_too_few_rounds_give_the_whole_range_at_its_own_lower_confidence() -> None:
    assert median_interval([3.0, 1.0, 2.0], 0.9) == (1.0, 3.0, 0.75)
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0], 0.95) == (1.0, 5.0, 0.9375)
    assert median_interval([2.0], 0.9) == (2.0, 2.0, 0.0)  # One round pins down nothing.
    assert all(math.isnan(v) for v in median_interval([], 0.9))


def test_a_confidence_outside_zero_to_one_is_refused() -> None:
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            median_interval([1.0, 2.0], confidence)


def test_paired_gives_the_ratio_its_interval_and_the_json_names() -> None:
    ours = [{"cpu": v} for v in (110.0, 90.0, 105.0, 130.0, 100.0)]
    baseline = [{"cpu": 100.0}] * 5
    result = paired(ours, baseline, "cpu")
    assert result.ratio == pytest.approx(1.05) == paired_ratio(ours, baseline, "cpu")
    assert result.interval == pytest.approx((0.9, 1.3))
    figures = result.figures("cpu_ratio")
    assert figures["cpu_ratio"] == result.ratio
    assert figures["cpu_ratio_interval"] == [result.low, result.high]
    assert figures["cpu_ratio_interval_coverage"] == 0.9375
