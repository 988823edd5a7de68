"""A value loaded from files and loaded again when they change on disk.

The service's TLS certificate and the client's TLS credentials both come from
files that a Kubernetes Secret mount (or a person) replaces while the process
runs. One rule for both: the files are looked at (device, inode, size,
modification time) at most once per ``check_interval``; when they changed, the
value is loaded again; a load that fails keeps the current value, logs one
warning, and is not tried again until the files change once more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["WatchedFiles"]

T = TypeVar("T")

#: A file's identity: (device, inode, size, mtime in ns); None when it cannot be stat'ed.
_Stamp = tuple[int, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class WatchedFiles(Generic[T]):
    """``load()``'s value, loaded again when one of ``paths`` changes.

    Thread-safe: grpc asks the server's certificate from its own threads.

    Args:
        paths: The files ``load`` reads (empty strings are left out).
        load: Reads the files into the value; raises one of ``errors`` when
            they cannot be used.
        errors: What ``load`` raises for files that cannot be used (anything
            else is a bug and propagates).
        what: Names the value in log lines ("TLS files", say).
        log: Where the warning and the change are logged.
        check_interval: Seconds between looks at the files.
        clock: Monotonic seconds; a seam for tests.

    Raises:
        Exception: Whatever ``load`` raises at construction: the files must be
            usable at start.
    """

    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[], T],
        *,
        errors: tuple[type[Exception], ...],
        what: str,
        log: logging.Logger,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = tuple(p for p in paths if p)
        self._load = load
        self._errors = errors
        self._what = what
        self._log = log
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        # Stamps are taken before reading: a write racing the read changes the
        # stamp again, so the next look reads the files once more.
        self._stamps = self._current_stamps()
        self._value = load()
        self._checked = clock()
        self._rejected: tuple[_Stamp, ...] | None = None
        #: How many times changed files were taken up.
        self.reloads = 0

    @property
    def value(self) -> T:
        """The value in use now (no look at the files)."""
        return self._value

    def refresh(self) -> bool:
        """Look at the files (at most once per interval); True when a new value was taken up."""
        with self._lock:
            now = self._clock()
            if now - self._checked < self._interval:
                return False
            self._checked = now
            stamps = self._current_stamps()
            if stamps in (self._stamps, self._rejected):
                return False
            try:
                value = self._load()
            except self._errors as exc:
                self._rejected = stamps
                self._log.warning(
                    "new %s cannot be used; keeping the current ones: %s", self._what, exc
                )
                return False
            self._value, self._stamps, self._rejected = value, stamps, None
            self.reloads += 1
            self._log.info("%s changed: taken up", self._what)
            return True

    def _current_stamps(self) -> tuple[_Stamp, ...]:
        return tuple(_stamp(p) for p in self._paths)
