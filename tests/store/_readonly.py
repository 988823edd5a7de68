"""Make a file or directory really read-only, for root too.

Root ignores permission bits, so as root the immutable attribute
(``chattr +i``, ext4 and most Linux file systems) does it: then the kernel
refuses every write and every ``open(O_RDWR)``, and ``os.access`` says so. As
another user, ``chmod`` is enough. Tests that need it skip, saying why, where
neither works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["read_only"]


def _chattr(flag: str, path: Path) -> bool:
    tool = shutil.which("chattr")
    if tool is None:
        return False
    done = subprocess.run([tool, flag, str(path)], capture_output=True, timeout=10)
    return done.returncode == 0


def _lock(path: Path) -> Callable[[], None]:
    """Make ``path`` read-only; the function that undoes it."""
    if os.geteuid() == 0:
        if not _chattr("+i", path):
            pytest.skip(f"running as root and `chattr +i` does not work on {path}")

        def unlock() -> None:
            _chattr("-i", path)

        return unlock
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return lambda: path.chmod(mode)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Callable[[], None]]:
    """``path`` refuses writes inside the block (or until the yielded function is called)."""
    undo = _lock(path)
    undone = False

    def writable() -> None:
        nonlocal undone
        if not undone:
            undone = True
            undo()

    try:
        assert not os.access(path, os.W_OK), f"{path} is still writable"
        yield writable
    finally:
        writable()
