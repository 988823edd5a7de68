"""meshdemo.watched.WatchedFiles on its own: the rule both TLS file watchers follow."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from client.testing import FakeClock
from meshdemo.watched import WatchedFiles

LOG = logging.getLogger("tests.watched")


def _watch(path: Path, clock: FakeClock) -> WatchedFiles[str]:
    def load() -> str:
        text = path.read_text()
        if not text.startswith("ok"):
            raise ValueError(f"{path.name} holds {text!r}")
        return text

    return WatchedFiles(
        [str(path), ""], load, errors=(ValueError,), what="test files", log=LOG, clock=clock
    )


def _replace(path: Path, text: str) -> None:
    path.with_suffix(".new").write_text(text)
    os.replace(path.with_suffix(".new"), path)  # a new inode, as a Secret update makes


def test_a_change_is_taken_up_at_the_first_look_after_the_interval(tmp_path: Path) -> None:
    path, clock = tmp_path / "f", FakeClock()
    path.write_text("ok 1")
    watched = _watch(path, clock)
    _replace(path, "ok 2")
    assert not watched.refresh() and watched.value == "ok 1"  # not looked at yet
    clock.advance(1.0)
    assert watched.refresh() and watched.value == "ok 2" and watched.reloads == 1
    clock.advance(1.0)
    assert not watched.refresh() and watched.reloads == 1  # unchanged since


def test_an_unusable_change_keeps_the_value_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "f", FakeClock()
    path.write_text("ok 1")
    watched = _watch(path, clock)
    _replace(path, "half-written")
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for _ in range(3):
            clock.advance(1.0)
            assert not watched.refresh()
    assert watched.value == "ok 1" and watched.reloads == 0
    assert [r.getMessage() for r in caplog.records] == [
        "new test files cannot be used; keeping the current ones: f holds 'half-written'"
    ]
    _replace(path, "ok 3")  # fixed: taken up at the next look
    clock.advance(1.0)
    assert watched.refresh() and watched.value == "ok 3"


def test_files_unusable_at_start_raise_and_other_errors_propagate(tmp_path: Path) -> None:
    path, clock = tmp_path / "f", FakeClock()
    path.write_text("bad")
    with pytest.raises(ValueError, match="holds 'bad'"):
        _watch(path, clock)
    path.write_text("ok")
    watched = _watch(path, clock)
    path.unlink()  # the loader's OSError is not one of its declared errors: a bug, raised
    clock.advance(1.0)
    with pytest.raises(FileNotFoundError):
        watched.refresh()
