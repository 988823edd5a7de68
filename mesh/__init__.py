"""The local mesh: the stand-in for the cluster on a laptop (``python -m mesh``).

It plays Kubernetes' parts around the same service and client code that run
in the cluster: replicas as processes on their own loopback addresses (the
ReplicaSet), a DNS server publishing the ready ones (the headless Service and
its EndpointSlices), and an OTLP trace receiver (Jaeger's collector). It uses
``service`` and ``client``; neither imports it.
"""

import os as _os

# The supervisor forks only to exec a replica at once: gRPC's fork handlers have
# nothing to protect, and they log a line per replica start when other threads
# use gRPC (the DNS server, the trace receiver).
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
