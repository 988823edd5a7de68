"""The mesh's DNS server: the client's loopback ``DnsServer`` under the mesh's service name.

The server itself lives in ``client._dns_server`` (public as
``client.testing.DnsServer``) so that the client's users test discovery against
the same server the mesh runs; the mesh adds only the name it publishes.
"""

from __future__ import annotations

from client._dns_server import DEFAULT_ZONE, DnsServer

__all__ = ["DEFAULT_ZONE", "SERVICE_NAME", "DnsServer"]

#: The name the local mesh publishes its ready replicas under, as the chart's
#: headless Service would be named in the ``meshdemo`` namespace.
SERVICE_NAME = "users.meshdemo.svc.cluster.local"
