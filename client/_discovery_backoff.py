"""Backoff for discovery: how long a resolver or a health watch waits after its source failed.

A resolver whose DNS server or Kubernetes API fails keeps its last known set
and tries again later; an endpoint whose health watch broke reconnects later
(``PoolConfig.watch_backoff()``). The one backoff serves all three. The delay
grows exponentially with the number of consecutive failures, never exceeds a
cap (however many failures: no float overflow), and is jittered so that many
clients that failed together do not come back together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DiscoveryBackoff"]


@dataclass(frozen=True, slots=True)
class DiscoveryBackoff:
    """Exponential backoff with a cap and proportional jitter.

    Attributes:
        initial: Delay in seconds after the first failure (before jitter).
        multiplier: Growth factor per further consecutive failure.
        cap: Largest delay in seconds (before jitter); jitter only shortens.
        jitter: Fraction in ``[0, 1]`` of the delay that is randomised away:
            the delay is scaled by ``1 - jitter + jitter * random()``.
    """

    initial: float = 1.0
    multiplier: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial must be > 0, got {self.initial}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not self.cap >= self.initial:
            raise ValueError(f"cap must be >= initial, got {self.cap} < {self.initial}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, failures: int, random: Callable[[], float]) -> float:
        """The wait after ``failures`` consecutive failures (``failures >= 1``).

        Args:
            failures: How many attempts in a row have failed, counting the last.
            random: Source of floats in ``[0, 1)``; injected so tests are exact.

        Returns:
            Seconds to wait, in ``[(1 - jitter) * base, base]`` where ``base``
            is ``min(cap, initial * multiplier ** (failures - 1))``.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        try:
            base = min(self.cap, self.initial * self.multiplier ** (failures - 1))
        except OverflowError:  # a huge failure count: far past the cap anyway
            base = self.cap
        return base * (1 - self.jitter + self.jitter * random())
