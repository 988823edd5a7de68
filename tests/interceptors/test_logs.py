"""JSON log lines: one object per record, extra fields, tracebacks, trace ids."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.logs import JsonFormatter, configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure_logging writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in saved[1]:
            root.removeHandler(handler)
    root.setLevel(saved[0])


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_every_record_is_one_json_line(stream: io.StringIO) -> None:
    log = logging.getLogger("meshdemo.test")
    log.info("hello %s", "world", extra={"replica": "r1", "port": 50051, "obj": object()})
    log.warning("multi\nline")
    [first, second] = lines(stream)
    assert first["message"] == "hello world"
    assert first["level"] == "INFO"
    assert first["logger"] == "meshdemo.test"
    assert (first["replica"], first["port"]) == ("r1", 50051)
    assert str(first["obj"]).startswith("<object object")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["time"]))
    assert "trace_id" not in first
    assert second["message"] == "multi\nline"
    assert "args" not in first
    assert "msg" not in first


def test_exceptions_are_formatted(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("meshdemo.test").exception("failed")
    [line] = lines(stream)
    assert line["level"] == "ERROR"
    assert "ValueError: bad value" in str(line["exception"])


def test_trace_ids_inside_a_span(stream: io.StringIO) -> None:
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("work") as span:
        logging.getLogger("meshdemo.test").info("inside")
        logging.getLogger("meshdemo.test").info("explicit", extra={"trace_id": ""})
    inside, explicit = lines(stream)
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert explicit["trace_id"] == ""
    provider.shutdown()


def test_configure_is_idempotent_and_levelled(stream: io.StringIO) -> None:
    root = logging.getLogger()
    configure_logging("warning", stream=stream)
    configure_logging(logging.WARNING, stream=stream)
    ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    logging.getLogger("meshdemo.test").info("hidden")
    logging.getLogger("meshdemo.test").warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_timestamp_is_utc_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = 86400.1234
    assert json.loads(JsonFormatter().format(record))["time"] == "1970-01-02T00:00:00.123Z"
