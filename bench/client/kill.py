"""Scenario 3: SIGKILL of one replica under a steady offered rate; failed calls (goal: 0 ours).

Two DNS behaviours, both measured:

* ``stays``: the killed replica stays published, as a pod whose endpoint has
  not been removed yet; clients keep finding its address and must route around
  refused connections.
* ``removed``: DNS stops publishing it 1 s after the kill, as Kubernetes removes
  a dead pod's endpoint; clients must re-resolve (TTL 1 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.client._chaos import VICTIM, chaos_rounds, fault_time
from bench.client._clients import BASELINE, OURS
from bench.client._cluster import HOSTS, Cluster
from bench.client._compare import Bounds
from bench.client._report import row

__all__ = ["DNS_MODES", "sigkill"]

#: ``stays`` or ``removed`` (from DNS, 1 s after the kill).
DNS_MODES = ("stays", "removed")
_TIMEOUT = 2.0
_REMOVAL_DELAY = 1.0


async def sigkill(cluster: Cluster, bounds: Bounds, dns_mode: str) -> dict[str, Any]:
    """Kill one replica a third into each run; figures per side and the table rows.

    Raises:
        ValueError: ``dns_mode`` is not one of :data:`DNS_MODES`.
    """
    if dns_mode not in DNS_MODES:
        raise ValueError(f"dns_mode must be one of {DNS_MODES}, not {dns_mode!r}")
    at = fault_time(bounds.duration)

    def events() -> Mapping[float, Callable[[], object]]:
        victim = cluster.replica(VICTIM)
        plan: dict[float, Callable[[], object]] = {at: victim.kill}
        if dns_mode == "removed":
            plan[at + _REMOVAL_DELAY] = lambda: cluster.publish(HOSTS[1:])
        return plan

    result = await chaos_rounds(cluster, bounds, events, call_timeout=_TIMEOUT)
    mid = result["median"]
    met = mid[OURS]["failed"] == 0
    name = f"3. SIGKILL, victim {'stays in' if dns_mode == 'stays' else 'removed from'} DNS"
    result["dns_mode"] = dns_mode
    result["met"] = met
    result["rows"] = [
        row(
            name,
            "failed calls",
            mid[OURS]["failed"],
            mid[BASELINE]["failed"],
            goal="ours 0",
            met=met,
            show_ratio=False,
        ),
        row(
            name,
            "p99 latency (ms)",
            mid[OURS]["p99_ms"],
            mid[BASELINE]["p99_ms"],
            goal="",
            met=None,
        ),
    ]
    return result
