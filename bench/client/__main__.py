"""``python -m bench.client [--quick] [--rounds N] [--only NAME ...] [--json FILE]``.

Runs the client scenarios against grpcio's own balancing in the same process
and prints a markdown table, then the full figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from bench._cli import json_safe, suite_parser
from bench.client._report import markdown_table
from bench.client._suite import SCENARIOS, machine, run_suite

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    return suite_parser("python -m bench.client", __doc__, SCENARIOS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the JSON; 0 when every goal is met, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    results = asyncio.run(run_suite(args.only, quick=args.quick, rounds=args.rounds))
    rows = [r for result in results.values() for r in result["rows"]]
    document = json_safe({"machine": machine(), "quick": args.quick, "results": results})
    text = json.dumps(document, indent=2, sort_keys=True)
    print(markdown_table(rows))
    print()
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(result["met"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
