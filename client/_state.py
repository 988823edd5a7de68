"""What the client knows about one endpoint: :class:`EndpointState`, most decisive first."""

from __future__ import annotations

import enum

__all__ = ["EndpointState"]


class EndpointState(enum.Enum):
    """What the client knows about one endpoint, most decisive first."""

    #: Removed from the resolved set: no new calls, closing when idle.
    DRAINING = "DRAINING"
    #: Ejected as an outlier until its ejection time is over.
    EJECTED = "EJECTED"
    #: Not reached: a connection attempt or health watch failed and no answer came since
    #: (the replica is down, or its channel is in TRANSIENT_FAILURE).
    UNREACHABLE = "UNREACHABLE"
    #: Its health service says NOT_SERVING (or does not know the service).
    NOT_SERVING = "NOT_SERVING"
    #: Its health service says SERVING (or has no health service).
    SERVING = "SERVING"
    #: Reached, health not watched.
    READY = "READY"
    #: Never reached yet (first attempt in progress), or the health watch broke and is
    #: on its first reconnect.
    CONNECTING = "CONNECTING"
