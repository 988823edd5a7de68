"""Smoke test of the instruction-count scenario: real valgrind runs, few calls.

Counts are not times, but nothing is asserted of their size beyond what must
hold for the counting to be real: every side counted something, our path adds
to the bare stub call's, and none of our calls was hedged or failed (the probe
holds the hedge delay at 1 s).
"""

from __future__ import annotations

import pytest

from bench.client._instructions_probe import BARE, OURS, OURS_NO_HEDGING, main
from bench.client.instructions import _count, available, instructions_per_call

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_every_side_is_counted_and_ours_adds_to_the_bare_call() -> None:
    assert available(), "valgrind is on every machine this project runs on"
    result = instructions_per_call(calls=200)
    sides = result["sides"]
    assert set(sides) == {BARE, OURS, OURS_NO_HEDGING}
    for side in (OURS, OURS_NO_HEDGING):
        assert sides[side]["hedges"] == 0 and sides[side]["failures"] == 0, side
        assert (
            result["added"][side]
            == sides[side]["instructions_per_call"] - sides[BARE]["instructions_per_call"]
        )
        assert result["added"][side] > 0, side
    assert sides[BARE]["instructions_per_call"] > 1000  # A call, not an empty loop.
    assert result["met"] is True
    assert [r["baseline"] for r in result["rows"]] == [sides[BARE]["instructions_per_call"]] * 2


def test_the_probe_refuses_an_unknown_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nobody", "10"]) == 2
    assert "unknown side 'nobody'" in capsys.readouterr().err


def test_a_probe_that_fails_under_valgrind_is_an_error_with_its_output() -> None:
    with pytest.raises(RuntimeError, match=r"callgrind run of 'nobody' failed \(2\)"):
        _count("nobody", 10)
