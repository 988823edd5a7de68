"""``python -m bench.reliability``: the fault scenarios behind docs/RELIABILITY.md.

The scenarios live in :mod:`bench.reliability._scenarios`; the fault tests in
``tests/mesh`` run the same functions and assert on their outcomes.
"""

from bench.reliability._registry import SCENARIOS, Scenario
from bench.reliability._scenarios import Outcome

__all__ = ["SCENARIOS", "Outcome", "Scenario"]
