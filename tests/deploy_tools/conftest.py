"""Helpers for the cluster-path checks: the repository root, and tools that CI requires."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def missing_tool(what: str) -> NoReturn:
    """Skip for a missing tool, or fail when CI says tools are required.

    ``.ci/run`` sets ``MESH_TEST_REQUIRE_TOOLS=1``: there a missing tool or
    schema is a broken CI image, not a reason to skip the check.
    """
    if os.environ.get("MESH_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what} (MESH_TEST_REQUIRE_TOOLS=1)")
    pytest.skip(what)


def shared_file(relative: str) -> Path:
    """``shared/<relative>`` beside the clone (``../shared`` from the root), else higher up.

    CI puts ``shared/`` next to the clone; a git worktree sits one level deeper.
    """
    for base in (ROOT.parent, *ROOT.parent.parents):
        candidate = base / "shared" / relative
        if candidate.is_file():
            return candidate
    missing_tool(f"shared/{relative} is not beside the clone ({ROOT.parent / 'shared'})")


def load_yaml(path: Path) -> object:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)
