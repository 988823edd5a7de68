"""What both benchmark suites' command lines share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "suite_parser"]


def suite_parser(
    prog: str, description: str | None, names: Sequence[str]
) -> argparse.ArgumentParser:
    """``--quick``, ``--rounds N``, ``--only NAME ...`` and ``--json FILE``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help="one short round of each (smoke)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison (median)")
    parser.add_argument(
        "--only", nargs="+", choices=list(names), default=list(names), help="run only these"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser


def json_safe(value: Any) -> Any:
    """``value`` with every NaN replaced by None: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
