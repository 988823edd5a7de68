"""The hedge delay of one method (:class:`HedgeDelay`): fixed, or adaptive.

Split from :mod:`client._hedge` (the policy and the loop), which re-exports it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from typing import TYPE_CHECKING, Final

from ._histogram import percentile_of_sorted

if TYPE_CHECKING:
    from ._hedge import HedgingPolicy

__all__ = ["HedgeDelay"]

#: Latencies between two recomputations of an adaptive delay.
_REFRESH: Final = 32
#: Latencies an endpoint needs in the window before its own percentile counts.
_MIN_PER_ENDPOINT: Final = 10
#: The adaptive delay is at least this many times a typical endpoint's median: a copy
#: sent after the delay wins only if the first one takes the delay plus the copy's own
#: latency (about a median) or more. At a light load the percentile is several medians
#: and this changes nothing; where the latencies bunch up (a saturated client, whose
#: own queue every copy waits in) a hedge at the percentile would need the first copy
#: to take little more than two medians, and in a saturated closed loop none did.
_MEDIANS: Final = 2
#: Latencies above the delay, since the last recomputation, that mean the latencies
#: shifted: recompute at once. A p99 lets through 0.32 of 32 on average; 4 or more
#: of the 31 before a regular recomputation, once in about 4000 periods (an exact
#: p99's; the window's estimate, about once in 1000).
_SHIFT: Final = 4


class HedgeDelay:
    """The hedge delay of one method: fixed, or a clamped percentile of recent latencies.

    The adaptive delay is the percentile of each endpoint's recent latencies,
    then the (lower) median over endpoints: what a typical replica shows. One
    percentile over every call would not do: with one replica of three stalled,
    a third of the latencies are the stall, the p99 becomes the stall itself and
    no hedge would ever go out. A copy that lost the race counts with the time it
    ran, a lower bound of its latency.

    Bounded and cheap: the last ``policy.window`` latencies, each endpoint's
    kept in ascending order as they come (a binary insertion, and the oldest
    latency of the window taken out the same way), so a recomputation, every
    32 new latencies, reads each endpoint's percentiles by index with no sort.
    It also comes at once when 4 of the latencies since the last recomputation
    were above the delay: the latencies shifted up (a load step), and the old
    delay would hedge nearly every call until the next regular recomputation.
    An endpoint whose own median was above the delay at the last recomputation
    (a slow replica, which the median over endpoints ignores) is slow as
    expected: its latencies do not count towards that.
    """

    __slots__ = (
        "_bar",
        "_fixed",
        "_next_refresh",
        "_order",
        "_order_endpoints",
        "_over",
        "_seen",
        "_slow",
        "_sorted",
        "_value",
        "_window",
        "policy",
    )

    def __init__(self, policy: HedgingPolicy) -> None:
        #: The policy this delay follows.
        self.policy = policy
        self._fixed = policy.delay is not None
        self._window = policy.window
        #: The count of latencies seen at which the next regular recomputation comes:
        #: the end of the warm-up, then every multiple of 32.
        self._next_refresh = max(1, policy.warmup)
        #: Per endpoint: its latencies in the window, ascending.
        self._sorted: dict[object, list[float]] = {}
        #: The window, oldest first: the latencies and, beside them, their endpoints (two
        #: deques, not one of tuples: a tuple per latency would be an object for the
        #: garbage collector to track, and each one lives long enough to reach its
        #: oldest generation, whose collections walk every object in the process).
        self._order: deque[float] = deque()
        self._order_endpoints: deque[object] = deque()
        self._seen = 0
        #: A latency above this counts towards an early recomputation (none before
        #: warm-up), unless its endpoint is in ``_slow`` (median above it).
        self._bar = math.inf
        self._slow: frozenset[object] = frozenset()
        #: Latencies above ``_bar`` since the last recomputation.
        self._over = 0
        self._value = policy.delay if policy.delay is not None else policy.max_delay

    @property
    def seen(self) -> int:
        """Latencies observed so far."""
        return self._seen

    def current(self) -> float:
        """Seconds to wait, now, before the next copy of a call of this method."""
        return self._value

    def observe(self, latency: float, endpoint: object = None) -> None:
        """One copy's latency (seconds, from that copy's own start) on ``endpoint``.

        ``endpoint`` is any hashable key; the client passes the Endpoint itself,
        whose identity hash is cheaper than its address's. Called for every
        answer, so kept to C calls, with nothing allocated once the window is full.
        """
        if self._fixed or not 0 <= latency < math.inf:  # NaN fails both comparisons.
            return
        ordered = self._sorted.get(endpoint)
        if ordered is None:
            ordered = self._sorted[endpoint] = []
        insort(ordered, latency)
        order, endpoints = self._order, self._order_endpoints
        order.append(latency)
        endpoints.append(endpoint)
        if len(order) > self._window:
            value, gone = order.popleft(), endpoints.popleft()
            its = self._sorted[gone]
            del its[bisect_left(its, value)]
            if not its:
                del self._sorted[gone]
        seen = self._seen = self._seen + 1
        if seen == self._next_refresh:
            self._next_refresh = (seen // _REFRESH + 1) * _REFRESH
            self._refresh()
        elif latency > self._bar and endpoint not in self._slow:
            self._over += 1
            if self._over >= _SHIFT:
                self._refresh()  # The latencies shifted up: do not wait for the period.

    def _refresh(self) -> None:
        policy = self.policy
        everyone = list(self._sorted.items())
        groups = [(e, s) for e, s in everyone if len(s) >= _MIN_PER_ENDPOINT] or everyone
        own = [
            (
                percentile_of_sorted(ordered, policy.percentile),
                percentile_of_sorted(ordered, 0.5),
                endpoint,
            )
            for endpoint, ordered in groups
        ]
        ranked = sorted(percentile for percentile, _, _ in own)
        middle = (len(ranked) - 1) // 2
        typical = sorted(median for _, median, _ in own)[middle]
        # Not under a few medians: a copy sent then rarely wins (see _MEDIANS).
        raw = max(ranked[middle], _MEDIANS * typical)
        # Above the cap the typical replica itself is slow (overload everywhere): a copy
        # would only add load, so no hedge until it is back under (failures still are).
        value = math.inf if raw > policy.max_delay else max(raw, policy.min_delay)
        bar = self._value = self._bar = value
        # Most of a slow replica's latencies are above the delay, as expected: not a shift.
        self._slow = frozenset(e for _, median, e in own if median > bar)
        self._over = 0

    def __repr__(self) -> str:
        kind = "adaptive" if self.policy.adaptive else "fixed"
        return f"<HedgeDelay {kind} {self._value * 1000:.2f} ms seen={self._seen}>"
