"""Shared pieces of the service benchmarks: bounds, result rows, seeding."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from bench.service._load import Load
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.testing import admin_token

__all__ = ["Bounds", "Row", "median", "seed_user"]


@dataclass(frozen=True)
class Bounds:
    """How long and how often each benchmark runs.

    Attributes:
        rounds: Rounds per comparison (sides alternate which goes first).
        load: The closed-loop load of the throughput comparisons.
        starts: Process starts timed by the start-up benchmark.
        streams: Chat streams held open by the memory benchmark.
        settle: Seconds a replica idles before its memory is read.
    """

    rounds: int = 5
    load: Load = field(default_factory=Load)
    starts: int = 7
    streams: int = 1000
    settle: float = 2.0


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Attributes:
        benchmark: Which benchmark.
        figure: What was measured.
        value: The median (or the single reading).
        unit: Its unit.
        goal: The goal as text (``>= 0.5``), empty when informational.
        met: Whether the goal is met (None when informational).
        detail: Per-round values and context.
    """

    benchmark: str
    figure: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else float("nan")


async def seed_user(address: str) -> str:
    """Create one user on ``address`` with an admin token; its id."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        reply = await stub.CreateUser(
            user_pb2.CreateUserRequest(
                name="Bench User", email="bench@example.com", age=30, roles=[user_pb2.ROLE_USER]
            ),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
            timeout=10.0,
        )
        return reply.user.id
