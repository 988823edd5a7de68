"""``python -m bench.client [--quick] [--rounds N] [--only NAME ...] [--json FILE]``.

Runs the client scenarios against grpcio's own balancing in the same process
and prints a markdown table, then the full figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.client._report import markdown_table
from bench.client._suite import SCENARIOS, machine, run_suite

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round of each (smoke)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per side (median)")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser


def _clean(value: Any) -> Any:
    """JSON has no NaN: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the JSON; 0 when every goal is met, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    results = asyncio.run(run_suite(args.only, quick=args.quick, rounds=args.rounds))
    rows = [r for result in results.values() for r in result["rows"]]
    document = _clean({"machine": machine(), "quick": args.quick, "results": results})
    text = json.dumps(document, indent=2, sort_keys=True)
    print(markdown_table(rows))
    print()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(result["met"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
