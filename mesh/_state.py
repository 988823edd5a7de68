"""The state directory: how ``mesh up`` and the commands run from other terminals meet.

Layout of a state directory (``.mesh/`` by default, or ``MESH_STATE_DIR``)::

    supervisor.json   pid of the running supervisor and its control socket
    status.json       the last status the supervisor published (also after it stopped)
    secret            the mesh's HS256 secret (mode 0600), kept across runs
    users.db          the shared SQLite store (unless --store names another one)
    logs/NAME.log     each replica's JSON log lines, restarts appended
    spans.jsonl       spans received by the trace receiver
    timeline.json     the run's samples and marks; timeline.png its picture

Every file the supervisor rewrites is replaced atomically (write, then
rename), so a reader in another process sees the old or the new version,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_DIR_VARIABLE",
    "StateDir",
    "resolve_state_dir",
]

#: Where the state lives when neither --state-dir nor MESH_STATE_DIR says.
DEFAULT_STATE_DIR = ".mesh"
STATE_DIR_VARIABLE = "MESH_STATE_DIR"
# A Unix socket path must fit in sockaddr_un (104 bytes on macOS, 108 on Linux).
_MAX_SOCKET_PATH = 100


def resolve_state_dir(flag: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The state directory: the flag, else ``MESH_STATE_DIR``, else ``.mesh``; absolute."""
    env = os.environ if environ is None else environ
    chosen = flag or env.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().resolve()


class StateDir:
    """Paths and atomic reads and writes inside one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"StateDir({str(self.root)!r})"

    @property
    def supervisor_file(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def secret_file(self) -> Path:
        return self.root / "secret"

    @property
    def sqlite_file(self) -> Path:
        return self.root / "users.db"

    @property
    def timeline_json(self) -> Path:
        return self.root / "timeline.json"

    @property
    def timeline_png(self) -> Path:
        return self.root / "timeline.png"

    def log_file(self, replica: str) -> Path:
        return self.root / "logs" / f"{replica}.log"

    def control_socket(self) -> Path:
        """Where the supervisor listens: in the directory, or /tmp when that path is too long."""
        inside = self.root / "control.sock"
        if len(str(inside)) <= _MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"meshdemo-{digest}.sock"

    def create(self) -> None:
        """Make the directory (and logs/) if missing; private to this user."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)

    def secret(self) -> str:
        """The mesh's JWT secret, made on first use (48 random bytes, hex)."""
        path = self.secret_file
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text().strip()
            if len(text) >= 32:
                return text
        value = secrets.token_hex(48)
        self.write_text(path, value + "\n", mode=0o600)
        return value

    def write_json(self, path: Path, document: Mapping[str, Any]) -> None:
        """Replace ``path`` with ``document`` as JSON, atomically."""
        self.write_text(path, json.dumps(document, indent=2) + "\n")

    def write_text(self, path: Path, text: str, *, mode: int = 0o644) -> None:
        """Replace ``path`` with ``text``, atomically (temporary file, then rename)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``, or None when it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def running_supervisor(self) -> dict[str, Any] | None:
        """supervisor.json when its process is alive, else None."""
        info = self.read_json(self.supervisor_file)
        if info is None or not isinstance(info.get("pid"), int):
            return None
        return info if pid_alive(info["pid"]) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
