"""Pickers: choose the endpoint for the next call attempt.

A picker only reads. The endpoint keeps its own in-flight counter (it counts a
call from the moment the pool hands out its channel until the call ends) and
its own availability (health and outlier ejection); the picker looks at both
once per candidate per pick and never changes them. That keeps every picker
free of bookkeeping: there is nothing to release when a call ends.

Every picker applies the same order of preference and differs only in how it
chooses inside the best non-empty group:

1. available and not excluded;
2. available but excluded (an endpoint that already failed this call), only
   when no other available endpoint exists;
3. not available and not excluded: when every endpoint is ejected or not
   serving, trying one anyway beats failing fast (ejection may be stale);
4. not available and excluded.

``pick`` returns ``None`` only for an empty endpoint sequence. A pick costs one
pass over the endpoints, which is a handful of replicas here.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar, runtime_checkable

__all__ = [
    "PICKERS",
    "Candidate",
    "LeastConnFullPicker",
    "LeastConnPicker",
    "Picker",
    "RandomPicker",
    "RoundRobinPicker",
    "make_picker",
]


@runtime_checkable
class Candidate(Protocol):
    """What a picker reads from an endpoint.

    Invariants the endpoint keeps: ``in_flight`` is never negative;
    ``is_available()`` is false while health says NOT_SERVING or while the
    endpoint is ejected as an outlier.
    """

    @property
    def in_flight(self) -> int:
        """Calls running on this endpoint now."""
        ...

    def is_available(self) -> bool:
        """Whether the endpoint should take new calls right now."""
        ...


C = TypeVar("C", bound=Candidate)


class Picker(Protocol):
    """Chooses one endpoint for the next attempt of a call."""

    def pick(self, endpoints: Sequence[C], exclude: Collection[object] = ()) -> C | None:
        """Choose one of ``endpoints``, avoiding those in ``exclude`` when possible.

        Args:
            endpoints: the current endpoint set, in a stable order.
            exclude: endpoints that already failed this call.

        Returns:
            The chosen endpoint, or ``None`` when ``endpoints`` is empty.
        """
        ...


def preferred_group(endpoints: Sequence[C], exclude: Collection[object] = ()) -> list[C]:
    """The best non-empty preference group (see the module docstring), in input order."""
    # Index: 0 available, 1 available+excluded, 2 unavailable, 3 unavailable+excluded.
    groups: tuple[list[C], list[C], list[C], list[C]] = ([], [], [], [])
    for endpoint in endpoints:
        rank = (0 if endpoint.is_available() else 2) + (1 if endpoint in exclude else 0)
        groups[rank].append(endpoint)
    return next((group for group in groups if group), [])


class _GroupPicker:
    """Shared shape: find the preferred group, then let the subclass choose in it."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = random.Random() if rng is None else rng

    def pick(self, endpoints: Sequence[C], exclude: Collection[object] = ()) -> C | None:
        group = preferred_group(endpoints, exclude)
        if not group:
            return None
        return group[0] if len(group) == 1 else self._choose(group)

    def _choose(self, group: Sequence[C]) -> C:
        """Choose from a group of at least two endpoints."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LeastConnPicker(_GroupPicker):
    """Power of two random choices: of two distinct random endpoints, the one with fewer calls.

    As gRPC-Go's least_request balancer and Envoy's LEAST_REQUEST: nearly as
    good as a full scan at steering away from a loaded replica, and two random
    draws never herd every client onto the same "least loaded" one. The two
    draws are ``rng.randrange(n)`` and ``rng.randrange(n - 1)`` (shifted past
    the first), so the ordered pair is uniform; on a tie the first draw wins,
    which is therefore a fair coin between the two.
    """

    def _choose(self, group: Sequence[C]) -> C:
        first = self._rng.randrange(len(group))
        second = self._rng.randrange(len(group) - 1)
        if second >= first:
            second += 1
        a, b = group[first], group[second]
        return b if b.in_flight < a.in_flight else a


class LeastConnFullPicker(_GroupPicker):
    """Full scan: an endpoint with the fewest calls, chosen at random among ties."""

    def _choose(self, group: Sequence[C]) -> C:
        loads = [endpoint.in_flight for endpoint in group]
        low = min(loads)
        best = [endpoint for endpoint, load in zip(group, loads, strict=True) if load == low]
        return best[0] if len(best) == 1 else self._rng.choice(best)


class RoundRobinPicker(_GroupPicker):
    """Takes the preferred group in turn, starting at a random offset.

    The cursor is one counter taken modulo the group's current size, so n
    consecutive picks over a group of n endpoints visit each one exactly once,
    also right after the group changed. The random start keeps many clients
    from hitting the first endpoint together.
    """

    _START_RANGE = 1 << 16

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._cursor = self._rng.randrange(self._START_RANGE)

    def _choose(self, group: Sequence[C]) -> C:
        chosen = group[self._cursor % len(group)]
        self._cursor += 1
        return chosen


class RandomPicker(_GroupPicker):
    """Uniformly random within the preferred group."""

    def _choose(self, group: Sequence[C]) -> C:
        return self._rng.choice(group)


_FACTORIES: dict[str, type[_GroupPicker]] = {
    "least_conn": LeastConnPicker,
    "least_conn_full": LeastConnFullPicker,
    "round_robin": RoundRobinPicker,
    "random": RandomPicker,
}

PICKERS: tuple[str, ...] = tuple(_FACTORIES)
"""The picker names :func:`make_picker` accepts."""


def make_picker(name: str, rng: random.Random | None = None) -> Picker:
    """Build the picker called ``name``.

    Args:
        name: one of :data:`PICKERS`.
        rng: the random source (a seeded one in tests); a fresh one by default.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown picker {name!r}; choose one of: {', '.join(PICKERS)}") from None
    return factory(rng)
