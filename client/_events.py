"""What changed between two load snapshots, as event lines a person can read.

:func:`endpoint_events` is pure: it compares the endpoint rows of two
consecutive :class:`~client._load.LoadSnapshot` values and names each change.
The live view and the plain progress lines print these; the local mesh demo
marks them on its timeline.

The transitions (old state -> new state) and the event each one makes:

========================================  ===============
an address appears                        ``added``
an address disappears                     ``removed``
anything -> DRAINING                      ``draining``
anything -> EJECTED                       ``ejected``
SERVING/READY/CONNECTING -> UNREACHABLE   ``lost``
SERVING/READY/CONNECTING -> NOT_SERVING   ``lost``
EJECTED/UNREACHABLE/NOT_SERVING ->        ``re-admitted``
SERVING/READY
any other change (CONNECTING -> SERVING,  none: nothing a reader must
SERVING -> CONNECTING, EJECTED ->         act on (the first is the normal
UNREACHABLE, ...)                         start, the second a reconnect)
========================================  ===============
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from client._load import EndpointRow, LoadSnapshot

__all__ = ["EVENT_KINDS", "EndpointEvent", "EventKind", "endpoint_events"]

EventKind = Literal["added", "removed", "lost", "ejected", "re-admitted", "draining"]
#: Every event kind, in the order of the table above.
EVENT_KINDS: Final = ("added", "removed", "draining", "ejected", "lost", "re-admitted")

#: States in which the endpoint takes (or is about to take) calls.
_USABLE: Final = frozenset({"SERVING", "READY", "CONNECTING"})
#: States that mean the replica cannot take calls.
_DOWN: Final = frozenset({"UNREACHABLE", "NOT_SERVING"})
#: States out of which a return to SERVING/READY is a re-admission.
_OUT: Final = frozenset({"EJECTED", "UNREACHABLE", "NOT_SERVING"})
_UP: Final = frozenset({"SERVING", "READY"})


@dataclass(frozen=True, slots=True)
class EndpointEvent:
    """One change of one endpoint.

    Attributes:
        time: Run-elapsed seconds of the snapshot that saw the change.
        address: ``host:port`` of the endpoint.
        kind: What happened (see the module's table).
        old_state: The state before; None for ``added``.
        new_state: The state after; None for ``removed``.
    """

    time: float
    address: str
    kind: EventKind
    old_state: str | None
    new_state: str | None


def _transition(old: str, new: str) -> EventKind | None:
    """The event a state change makes, if any (the module's table, row by row)."""
    if old == new:
        return None
    if new == "DRAINING":
        return "draining"
    if new == "EJECTED":
        return "ejected"
    if new in _DOWN and old in _USABLE:
        return "lost"
    if new in _UP and old in _OUT:
        return "re-admitted"
    return None


def endpoint_events(previous: LoadSnapshot | None, current: LoadSnapshot) -> list[EndpointEvent]:
    """The changes from ``previous`` to ``current``, in ``current``'s endpoint order.

    With no previous snapshot, every endpoint of ``current`` is ``added``.
    Removed endpoints come last, in ``previous``'s order.
    """
    before: dict[str, EndpointRow] = {}
    if previous is not None:
        before = {row.address: row for row in previous.endpoints}
    now = {row.address: row for row in current.endpoints}
    events: list[EndpointEvent] = []
    for address, row in now.items():
        old_state = before[address].state if address in before else None
        kind = "added" if old_state is None else _transition(old_state, row.state)
        if kind is not None:
            events.append(EndpointEvent(current.elapsed, address, kind, old_state, row.state))
    for address, old in before.items():
        if address not in now:
            events.append(EndpointEvent(current.elapsed, address, "removed", old.state, None))
    return events
