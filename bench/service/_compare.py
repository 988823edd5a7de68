"""Rounds of the same load against several servers, alternating who goes first."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.service._load import Load, LoadResult, get_user_load
from service.testing import reader_token

__all__ = ["Target", "compare_rates"]


@dataclass(frozen=True)
class Target:
    """A server under load: its address and the user GetUser asks for."""

    address: str
    user_id: str


async def compare_rates(
    targets: Mapping[str, Target], load: Load, rounds: int
) -> dict[str, list[LoadResult]]:
    """Run ``load`` on every target, ``rounds`` times; results by target name.

    Round ``i`` visits the targets in order rotated by ``i`` (reversed on odd
    rounds for two targets), so no side always runs first or last.
    """
    token = reader_token("bench-reader")
    names = list(targets)
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            target = targets[name]
            results[name].append(await get_user_load(target.address, target.user_id, token, load))
    return results
