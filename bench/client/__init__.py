"""Client benchmarks: ours (``UserClient``) against grpcio's own balancing, in the same run.

``python -m bench.client`` runs every scenario; each is also a function that
takes a :class:`Cluster` and :class:`Bounds` and returns a dict of figures.
"""

from bench.client._cluster import HOSTS, NAME, Cluster
from bench.client._compare import Bounds
from bench.client._suite import SCENARIOS, run_suite
from bench.client.cpu import cpu_per_call
from bench.client.kill import DNS_MODES, sigkill
from bench.client.slow_replica import slow_replica
from bench.client.stall import stall
from bench.client.throttle import healthy_hedges, throttled
from bench.client.throughput import throughput

__all__ = [
    "DNS_MODES",
    "HOSTS",
    "NAME",
    "SCENARIOS",
    "Bounds",
    "Cluster",
    "cpu_per_call",
    "healthy_hedges",
    "run_suite",
    "sigkill",
    "slow_replica",
    "stall",
    "throttled",
    "throughput",
]
