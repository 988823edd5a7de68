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

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

__all__ = [
    "PICKERS",
    "Candidate",
    "LatencyCandidate",
    "LeastConnFullPicker",
    "LeastConnPicker",
    "PeakEwma",
    "PeakEwmaPicker",
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
    if not exclude:  # The common first attempt: groups 1 and 3 are empty.
        available = [endpoint for endpoint in endpoints if endpoint.is_available()]
        return available or list(endpoints)
    # Index: 0 available, 1 available+excluded, 2 unavailable, 3 unavailable+excluded.
    groups: tuple[list[C], list[C], list[C], list[C]] = ([], [], [], [])
    for endpoint in endpoints:
        rank = (0 if endpoint.is_available() else 2) + (1 if endpoint in exclude else 0)
        groups[rank].append(endpoint)
    return next((group for group in groups if group), [])


def reads_latency(picker: object) -> bool:
    """Whether ``picker`` asks its candidates' ``latency_estimate`` (then they must keep one).

    A picker says so with a ``reads_latency`` attribute; one that does not say
    (a user's own) is taken to read it.
    """
    return bool(getattr(picker, "reads_latency", True))


class _GroupPicker:
    """Shared shape: find the preferred group, then let the subclass choose in it."""

    #: Whether this picker reads ``latency_estimate`` (see :func:`reads_latency`).
    reads_latency: ClassVar[bool] = False

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
    draws are ``int(rng.random() * n)`` and ``int(rng.random() * (n - 1))``
    (shifted past the first), so the ordered pair is uniform; on a tie the
    first draw wins, which is therefore a fair coin between the two.
    """

    def pick(self, endpoints: Sequence[C], exclude: Collection[object] = ()) -> C | None:
        # The common case first: nothing excluded and the lighter of two draws from
        # every endpoint available. Only the lighter is asked: when it is available,
        # it is the choice whether or not the other is (an unavailable one is never
        # chosen over it), and one availability check per pick is spared. An
        # unavailable lighter one (as a replica that takes no calls is) leaves the
        # choice to the preference groups.
        if not exclude and len(endpoints) >= 2:
            a, b = self._draw(endpoints)
            lighter = self._lighter(a, b)
            if lighter.is_available():
                return lighter
        return super().pick(endpoints, exclude)

    def _choose(self, group: Sequence[C]) -> C:
        return self._lighter(*self._draw(group))

    def _lighter(self, a: C, b: C) -> C:
        """The one of the two with fewer calls in flight; the first drawn on a tie."""
        # Read in place, not through a cost function: two calls fewer on every pick.
        return b if b.in_flight < a.in_flight else a

    def _draw(self, group: Sequence[C]) -> tuple[C, C]:
        """Two distinct endpoints of ``group`` (at least two), the ordered pair uniform."""
        random = self._rng.random
        count = len(group)
        first = int(random() * count)
        second = int(random() * (count - 1))
        if second >= first:
            second += 1
        return group[first], group[second]


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


class PeakEwma:
    """A latency estimate that jumps up at once and decays slowly (Finagle's peak EWMA).

    A sample above the estimate replaces it; a lower one is blended in with a
    weight that grows with the time since the last sample (time constant
    ``tau``). With no samples the estimate decays toward zero, so an endpoint
    that was slow is tried again after a while instead of being shunned for
    ever. Time comes through ``clock``.
    """

    __slots__ = ("_clock", "_stamp", "_tau", "_value")

    def __init__(self, tau: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if tau <= 0:
            raise ValueError("tau must be positive")
        self._tau = tau
        self._clock = clock
        self._value = 0.0
        self._stamp = clock()

    def _decayed(self, now: float) -> float:
        return self._value * math.exp(-max(0.0, now - self._stamp) / self._tau)

    def observe(self, seconds: float) -> None:
        """Fold in one latency sample, in seconds."""
        now = self._clock()
        weight = math.exp(-max(0.0, now - self._stamp) / self._tau)  # one exp per sample
        current = self._value * weight
        if seconds >= current:
            self._value = seconds
        else:
            self._value = current * weight + seconds * (1.0 - weight)
        self._stamp = now

    def value(self) -> float:
        """The estimate now, in seconds (0.0 before any sample)."""
        return self._decayed(self._clock())


@runtime_checkable
class LatencyCandidate(Candidate, Protocol):
    """A candidate that also keeps a latency estimate (for :class:`PeakEwmaPicker`)."""

    def latency_estimate(self) -> float:
        """Recent latency of this endpoint's answers, in seconds (0.0 when unknown)."""
        ...


#: Cost of an endpoint with calls in flight but no latency sample yet: high, so
#: a new endpoint is not buried under calls before its first answer.
UNKNOWN_LATENCY_PENALTY = 1.0


def _ewma_cost(endpoint: Candidate) -> float:
    # getattr, not isinstance(LatencyCandidate): a runtime protocol check costs
    # microseconds, twice per pick.
    estimate = getattr(endpoint, "latency_estimate", None)
    latency: float = estimate() if estimate is not None else 0.0
    if latency == 0.0 and endpoint.in_flight:
        latency = UNKNOWN_LATENCY_PENALTY
    return latency * (endpoint.in_flight + 1)


class PeakEwmaPicker(LeastConnPicker):
    """Power of two choices on latency times load, as Finagle's and Linkerd's peak EWMA.

    The cost of an endpoint is its peak-EWMA latency times (in-flight calls +
    1): a replica ten times slower than the others looks ten times as loaded,
    so it gets a far smaller share than in-flight counting alone gives it
    (least_conn sends it roughly 1/(1 + 2 x 10) of the calls among three
    replicas; here it gets the occasional probe as its estimate decays).
    Endpoints without a latency estimate cost 0 while idle, so they are tried.
    """

    reads_latency = True

    def _lighter(self, a: C, b: C) -> C:
        """The one of the two with the lower cost; the first drawn on a tie."""
        return b if _ewma_cost(b) < _ewma_cost(a) else a


_FACTORIES: dict[str, type[_GroupPicker]] = {
    "least_conn": LeastConnPicker,
    "peak_ewma": PeakEwmaPicker,
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
