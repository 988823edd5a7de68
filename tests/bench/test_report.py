"""The client benchmark's table (pure: no cluster)."""

from __future__ import annotations

from bench.client._report import markdown_table, row


def test_a_ratio_with_an_interval_shows_it_and_the_table_explains_it() -> None:
    rows = [
        row(
            "cpu", "CPU", 120.0, 100.0, goal="<= 1.1", met=False, paired=1.19, interval=(1.01, 1.3)
        ),
        row("cpu", "hedges", 0.01, 0.0, goal="", met=None, show_ratio=False, interval=(0.0, 1.0)),
    ]
    text = markdown_table(rows)
    assert "| 1.19 (1.01 to 1.3) | <= 1.1 | **no** |" in text
    assert "| 0.01 | 0 | - |" in text  # No ratio shown: no interval either.
    assert text.count("order statistics") == 1
    assert "at least 90 % confidence" in text


def test_a_table_without_intervals_has_no_legend() -> None:
    text = markdown_table([row("x", "calls/s", 1.0, 2.0, goal=">= 0.9", met=False)])
    assert text.splitlines()[-1].startswith("| x | calls/s |")
    assert "| 0.5 |" in text
