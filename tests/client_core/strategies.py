"""Hypothesis strategies and settings for the client core's property tests."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from client._picker import PICKERS
from client._retry import RetryPolicy

from .fakes import FakeCandidate

# No example database (tests leave no files behind) and no per-example deadline
# (the machine is shared; slowness there is not a bug here).
PROPERTY = settings(
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)

picker_names = st.sampled_from(PICKERS)
seeds = st.integers(min_value=0, max_value=2**32 - 1)

non_ok_codes = st.sampled_from([c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])


@st.composite
def candidates(draw: st.DrawFn, min_size: int = 0, max_size: int = 8) -> list[FakeCandidate]:
    """Endpoints with random loads and availability, distinct names."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    return [
        FakeCandidate(
            name=f"e{i}",
            load=draw(st.integers(min_value=0, max_value=20)),
            available=draw(st.booleans()),
        )
        for i in range(size)
    ]


@st.composite
def candidates_with_exclusions(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 8
) -> tuple[list[FakeCandidate], frozenset[object]]:
    """Endpoints plus a random subset of them to exclude."""
    pool = draw(candidates(min_size=min_size, max_size=max_size))
    excluded = frozenset(e for e in pool if draw(st.booleans()))
    return pool, excluded


backoff_seconds = st.floats(min_value=0.001, max_value=5.0, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn, jitter: bool | None = None) -> RetryPolicy:
    """Valid retry policies (any jitter setting unless one is given)."""
    initial = draw(backoff_seconds)
    return RetryPolicy(
        max_attempts=draw(st.integers(min_value=1, max_value=8)),
        initial_backoff=initial,
        max_backoff=initial + draw(st.floats(min_value=0.0, max_value=10.0)),
        multiplier=draw(st.floats(min_value=1.0, max_value=4.0)),
        jitter=draw(st.booleans()) if jitter is None else jitter,
        per_attempt_timeout=draw(st.none() | st.floats(min_value=0.01, max_value=5.0)),
    )


retry_numbers = st.integers(min_value=1, max_value=2_000)
