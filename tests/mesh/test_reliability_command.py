"""``python -m bench.reliability`` keeps working: one scenario, one round, into a scratch file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reliability.__main__ import BEGIN, END, main

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
