"""The statistics the client benchmark compares sides by (pure: no cluster)."""

from __future__ import annotations

import math

import pytest

from bench.client._compare import medians, paired_ratio


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
