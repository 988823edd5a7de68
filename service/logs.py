"""JSON logging: every record becomes one line of JSON on stdout.

Each line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger`` and ``message``, then every field passed through ``extra=``, then
``exception`` (the formatted traceback) when the record carries one. Inside a
traced call, ``trace_id`` and ``span_id`` are added unless the record already
has them, so any log line can be joined with its trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from opentelemetry import trace

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD_ATTRS = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "taskName",
    }
)


# The formatted whole second of the last record: strftime once per second,
# not once per line. A tuple, so threads swap it atomically.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _last_second
    whole = int(created)
    second, text = _last_second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second = (whole, text)
    return f"{text}.{int((created - whole) * 1000):03d}Z"


def _add_trace_ids(payload: dict[str, Any]) -> None:
    if "trace_id" in payload:
        return
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        payload["trace_id"] = format(ctx.trace_id, "032x")
        payload["span_id"] = format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (no embedded newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line; values JSON cannot hold become strings."""
        payload: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS:
                payload[key] = value
        _add_trace_ids(payload)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure_logging` installs, so a second call replaces it."""


def configure_logging(level: str | int, *, stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (default stdout) as one JSON line.

    Idempotent: calling it again replaces the handler it installed before and
    leaves other handlers alone.

    Args:
        level: A level name (``"INFO"``) or number for the root logger.
        stream: Where lines go; default ``sys.stdout``.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
