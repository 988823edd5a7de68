"""Scenario 4: one replica stalls (SIGSTOP, stays in DNS); failed calls and p99, ours vs baseline.

A stopped process keeps its TCP connections open and answers nothing: round
robin keeps sending it a third of the calls, which wait for their deadline.
Ours bounds each attempt (:data:`client.DEFAULT_ATTEMPT_TIMEOUTS`, 0.5 s for
GetUser) and retries elsewhere. Both sides use the same 2 s overall deadline.
The stopped replica is always resumed and killed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.client._chaos import VICTIM, chaos_rounds, fault_time
from bench.client._clients import BASELINE, OURS
from bench.client._cluster import Cluster
from bench.client._compare import Bounds
from bench.client._report import row
from client import DEFAULT_ATTEMPT_TIMEOUTS

__all__ = ["P99_SLACK_MS", "stall"]

_DEADLINE = 2.0
#: Milliseconds allowed above the attempt timeout: the retry on a healthy replica.
P99_SLACK_MS = 100.0
_NAME = "4. SIGSTOP (stays in DNS)"


async def stall(cluster: Cluster, bounds: Bounds) -> dict[str, Any]:
    """Stop one replica a third into each run; figures per side and the table rows."""
    at = fault_time(bounds.duration)

    def events() -> Mapping[float, Callable[[], object]]:
        return {at: cluster.replica(VICTIM).pause}

    result = await chaos_rounds(cluster, bounds, events, call_timeout=_DEADLINE)
    mid = result["median"]
    attempt_ms = (DEFAULT_ATTEMPT_TIMEOUTS["GetUser"] or _DEADLINE) * 1000.0
    bound_ms = attempt_ms + P99_SLACK_MS
    no_failure = mid[OURS]["failed"] == 0
    bounded = mid[OURS]["p99_ms"] <= bound_ms
    result["met"] = no_failure and bounded
    result["rows"] = [
        row(
            _NAME,
            "failed calls",
            mid[OURS]["failed"],
            mid[BASELINE]["failed"],
            goal="ours 0",
            met=no_failure,
            show_ratio=False,
        ),
        row(
            _NAME,
            "p99 latency (ms)",
            mid[OURS]["p99_ms"],
            mid[BASELINE]["p99_ms"],
            goal=f"ours <= {bound_ms:.0f} (attempt timeout + {P99_SLACK_MS:.0f})",
            met=bounded,
        ),
    ]
    return result
