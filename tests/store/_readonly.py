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
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["read_only"]


def _chattr(flag: str, path: Path) -> bool:
    tool = shutil.which("chattr")
    if tool is None:
        return False
    done = subprocess.run([tool, flag, str(path)], capture_output=True, timeout=10)
    return done.returncode == 0


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    if not _chattr("+i", path):
        pytest.skip(f"running as root and `chattr +i` does not work on {path}")
    try:
        yield
    finally:
        _chattr("-i", path)


@contextlib.contextmanager
def _without_write_bits(path: Path) -> Iterator[None]:
    mode = path.stat().st_mode
    path.chmod(stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        path.chmod(stat.S_IMODE(mode))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` refuses writes inside the block and is writable again after it."""
    guard = _immutable(path) if os.geteuid() == 0 else _without_write_bits(path)
    with guard:
        assert not os.access(path, os.W_OK), f"{path} is still writable"
        yield
