"""``python -m bench.reliability`` keeps working: one scenario, one round, into a scratch file."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reliability.__main__ import BEGIN, END, _healthy, _write, main, render
from bench.reliability._scenarios import Outcome

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_the_command_writes_the_table_between_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "RELIABILITY.md"
    doc.write_text(f"# Reliability\n\nprose stays\n\n{BEGIN}\nold table\n{END}\n\nand after\n")
    assert main(["--only", "sigkill", "--rounds", "1", "--out", str(doc)]) == 0
    text = doc.read_text()
    assert "old table" not in text
    assert text.startswith("# Reliability\n\nprose stays") and text.endswith("and after\n")
    row = next(line for line in text.splitlines() if line.startswith("| replica SIGKILLed"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "1"  # rounds
    assert int(cells[3]) > 100  # calls
    assert cells[6:8] == ["0", "0"]  # no lost write, no duplicate


def test_a_bad_rounds_value_is_refused() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--rounds", "0", "--out", "-"])
    assert exited.value.code == 2


def test_a_scenario_that_raised_is_a_row_and_fails_the_run() -> None:
    table = render([("postgres-outage", "AssertionError: DNS empty: not within 8.0 s")])
    assert "| postgres-outage |" in table
    assert "**AssertionError: DNS empty: not within 8.0 s**" in table
    assert not _healthy(("postgres-outage", "AssertionError: boom"))
    assert _healthy(("postgres-outage", "skipped: no initdb found"))
    assert not _healthy(Outcome("s", "l", lost=1))
    assert _healthy(Outcome("s", "l"))


def test_a_file_without_markers_gets_the_table_appended(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Notes\n")
    _write(str(doc), "| table |")
    text = doc.read_text()
    assert text.startswith("# Notes\n")
    assert f"{BEGIN}\n" in text and text.rstrip().endswith(END) and "| table |" in text
    _write(str(tmp_path / "new.md"), "| fresh |")
    assert "| fresh |" in (tmp_path / "new.md").read_text()


# --- the benchmark stands on its own: installed modules only, from any directory ----------


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["bench", "service"])
def test_nothing_outside_the_tests_imports_the_test_tree(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / package).rglob("*.py")
        for module in _imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    }
    assert offenders == set()


def test_the_command_runs_from_outside_the_repository(tmp_path: Path) -> None:
    """Its imports (the private PostgreSQL helper among them) come from the installed project."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m bench.reliability")
