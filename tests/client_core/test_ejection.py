"""OutlierEjection on its own, on a fake clock: the streak, growing ejections, lazy re-admission."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client._ejection import EjectionConfig, OutlierEjection
from client.testing import FakeClock

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def ejection(**settings: float) -> tuple[OutlierEjection, FakeClock]:
    clock = FakeClock(100.0)
    return OutlierEjection(EjectionConfig(**settings), clock, name="127.0.0.2:1"), clock  # type: ignore[arg-type]


def test_failures_in_a_row_eject_for_a_time_growing_to_the_cap() -> None:
    out, clock = ejection(consecutive_failures=2, base_ejection_time=1.0, max_ejection_time=2.5)
    lengths = []
    for n in range(4):
        if n == 0:  # The first ejection takes the whole streak...
            out.record(UNAVAILABLE)
            assert not out.is_ejected()
        out.record(None)  # ...(a connection failure counts too); later ones, one failure.
        assert out.is_ejected()
        start = clock.now
        while out.is_ejected():
            clock.advance(0.25)
        lengths.append(clock.now - start)
    assert lengths == [1.0, 2.0, 2.5, 2.5]
    assert out.times_ejected == 4


def test_a_readmitted_endpoint_is_ejected_again_by_its_first_failure() -> None:
    # Probation: still dead or still slow costs one attempt per ejection, not three.
    out, clock = ejection(consecutive_failures=3, base_ejection_time=1.0)
    for _ in range(3):
        out.record(UNAVAILABLE)
    assert out.is_ejected()
    clock.advance(1.0)
    assert not out.is_ejected()
    out.record(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert out.is_ejected()
    assert out.times_ejected == 2


@pytest.mark.parametrize("answer", [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND])
def test_an_answer_after_readmission_ends_the_probation(answer: grpc.StatusCode) -> None:
    out, clock = ejection(consecutive_failures=3, base_ejection_time=1.0)
    for _ in range(3):
        out.record(UNAVAILABLE)
    clock.advance(1.0)
    out.record(answer)  # it answered: back to a full streak before the next ejection
    out.record(UNAVAILABLE)
    out.record(UNAVAILABLE)
    assert not out.is_ejected()
    out.record(UNAVAILABLE)
    assert out.is_ejected()


def test_a_failure_that_says_nothing_of_the_replica_keeps_the_probation() -> None:
    out, clock = ejection(consecutive_failures=3, base_ejection_time=1.0)
    for _ in range(3):
        out.record(UNAVAILABLE)
    clock.advance(1.0)
    out.record(grpc.StatusCode.DEADLINE_EXCEEDED, outlier=False)  # the caller's own deadline
    assert not out.is_ejected()
    out.record(UNAVAILABLE)
    assert out.is_ejected()


@pytest.mark.parametrize(
    ("code", "outlier"),
    [
        (grpc.StatusCode.OK, True),
        (grpc.StatusCode.NOT_FOUND, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, False),
        (UNAVAILABLE, False),
    ],
)
def test_an_answer_or_a_non_outlier_failure_ends_the_streak(
    code: grpc.StatusCode, outlier: bool
) -> None:
    out, _ = ejection(consecutive_failures=3)
    out.record(UNAVAILABLE)
    out.record(grpc.StatusCode.DEADLINE_EXCEEDED)
    out.record(code, outlier=outlier)
    out.record(UNAVAILABLE)
    out.record(UNAVAILABLE)
    assert not out.is_ejected()
    out.record(UNAVAILABLE)
    assert out.is_ejected()


def test_failures_while_ejected_neither_lengthen_it_nor_count_afterwards() -> None:
    out, clock = ejection(consecutive_failures=1, base_ejection_time=1.0)
    out.record(UNAVAILABLE)
    for _ in range(5):
        out.record(UNAVAILABLE)
    assert out.times_ejected == 1
    clock.advance(1.0)
    assert not out.is_ejected()  # re-admitted lazily, by the clock alone
    assert "admitted" in repr(out)


@given(st.lists(st.sampled_from([UNAVAILABLE, grpc.StatusCode.OK, None]), max_size=60))
def test_an_ejection_never_outlasts_the_cap(codes: list[grpc.StatusCode | None]) -> None:
    out, clock = ejection(consecutive_failures=1, base_ejection_time=1.0, max_ejection_time=3.0)
    for code in codes:
        out.record(code)
        if out.is_ejected():
            clock.advance(3.0)
            assert not out.is_ejected()
