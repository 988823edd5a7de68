"""The drills' traffic and write checks; they live in :mod:`bench.reliability`, shared with it."""

from __future__ import annotations

from bench.reliability._traffic import (
    Traffic,
    TrafficResult,
    WriteAudit,
    all_users,
    audit_writes,
    check_writes,
    eventually,
)

__all__ = [
    "Traffic",
    "TrafficResult",
    "WriteAudit",
    "all_users",
    "audit_writes",
    "check_writes",
    "eventually",
]
