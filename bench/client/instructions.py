"""Scenario 1c: instructions per GetUser on the client's own path, counted by callgrind.

Each side runs in a process of its own under ``valgrind --tool=callgrind``
over fake channels (:mod:`bench.client._instructions_probe`), at 1 in flight,
with counting on only for the measured calls. Instruction counts do not move
with the machine's load: the same code gives the same count to a fraction of
a percent, where CPU seconds on this machine move by 5-10 % between rounds.
So a change to the hot path shows here at once, even one too small for the
CPU scenario (1b) to tell from noise.

The sides: a bare generated stub over three fake channels in turn (what any
client pays: the stub, the call object, the loop's turn), ours with hedging
off, and ours with the default hedging of GetUser (its delay held at 1 s, so
no hedge is sent however slowly callgrind runs). The figure is the
instructions ours adds per call, and how many times the bare call's count ours
is. There is no goal: a real GetUser here costs about 420,000 instructions
(grpc core included, counted the same way against real replicas), so the
added figure over that is the share of a real call's CPU the Python path costs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.client._instructions_probe import BARE, OURS, OURS_NO_HEDGING, SIDES
from bench.client._report import row

__all__ = ["available", "instructions_per_call"]

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
#: Seconds one side may take under callgrind (about 50 times slower than native).
_TIMEOUT = 300.0


def available() -> bool:
    """Whether valgrind and callgrind_control are on the PATH."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def _count(side: str, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshdemo-callgrind-") as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={Path(tmp) / 'callgrind.out'}",
            sys.executable,
            "-m",
            "bench.client._instructions_probe",
            side,
            str(calls),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(
            f"callgrind run of {side!r} failed ({done.returncode}): {done.stderr[-800:]}"
        )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["instructions_per_call"] = round(int(found[-1]) / calls)
    return figures


def instructions_per_call(calls: int = 2000) -> dict[str, Any]:
    """Instructions per GetUser of every side, and what ours adds to the bare call.

    Returns:
        ``sides`` (per side: ``instructions_per_call``, and for ours the
        ``hedges`` and ``failures`` seen, which must be 0), ``added`` (per our
        side: instructions over the bare call's), ``met`` (True: no goal, but
        False if any of our calls was hedged or failed) and the table ``rows``.
    """
    sides = {side: _count(side, calls) for side in SIDES}
    bare = sides[BARE]["instructions_per_call"]
    added: dict[str, int] = {}
    rows = []
    clean = True
    for side, label in ((OURS, "defaults (hedging on)"), (OURS_NO_HEDGING, "hedging off")):
        ours = sides[side]["instructions_per_call"]
        added[side] = ours - bare
        clean = clean and sides[side].get("hedges") == 0 and sides[side].get("failures") == 0
        rows.append(
            row(
                f"1c. 1 in flight, fake channels, {label}",
                "instructions per GetUser (callgrind)",
                ours,
                bare,
                goal=f"adds {ours - bare} per call",
                met=None,
            )
        )
    return {
        "settings": {"calls": calls, "in_flight": 1},
        "sides": sides,
        "added": added,
        "met": clean,
        "rows": rows,
    }
