"""Access logging: one JSON line per RPC, with its fields, on all four kinds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshdemo.v1 import user_pb2
from service.interceptors import ErrorMappingInterceptor, LoggingInterceptor
from service.metrics import ServerMetrics
from tests.interceptors import servicer as cmd
from tests.interceptors.calls import (
    BIDI_STREAM,
    CLIENT_STREAM,
    KINDS,
    SERVER_STREAM,
    UNARY,
    call,
    full_name,
)
from tests.interceptors.conftest import Harness, admin_md, eventually, harness_for
from tests.interceptors.servicer import TestServicer

# (requests, responses) logged for a successful call with items=3.
COUNTS = {SERVER_STREAM: (1, 3), CLIENT_STREAM: (3, 1), BIDI_STREAM: (3, 3)}


@pytest.mark.parametrize("kind", KINDS)
async def test_one_line_per_call_with_its_fields(harness: Harness, kind: str) -> None:
    assert (await call(harness.stub, kind, metadata=admin_md("alice"), items=3)).code.name == "OK"
    [line] = await harness.wait_access(1)
    assert line["level"] == "INFO"
    assert line["logger"] == harness.logger.name
    assert line["method"] == full_name(kind)
    assert line["code"] == "OK"
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    assert line["sub"] == "alice"
    [span] = await harness.wait_spans(1)
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    if kind == UNARY:
        assert "requests" not in line
        assert "responses" not in line
    else:
        assert (line["requests"], line["responses"]) == COUNTS[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("command", "code", "level"),
    [
        (cmd.INVALID, "INVALID_ARGUMENT", "INFO"),
        (cmd.BOOM, "INTERNAL", "ERROR"),
        (cmd.ABORT, "NOT_FOUND", "INFO"),
    ],
)
async def test_failed_calls_log_their_code(
    harness: Harness, kind: str, command: str, code: str, level: str
) -> None:
    outcome = await call(harness.stub, kind, command, metadata=admin_md())
    assert outcome.code.name == code
    [line] = await harness.wait_access(1)
    assert (line["code"], line["level"]) == (code, level)
    if kind == SERVER_STREAM:
        assert line["responses"] == 2  # two items went out before the failure


async def test_refused_call_is_logged_without_sub(harness: Harness) -> None:
    assert (await call(harness.stub, UNARY)).code.name == "UNAUTHENTICATED"
    [line] = await harness.wait_access(1)
    assert line["code"] == "UNAUTHENTICATED"
    assert "sub" not in line


async def test_untraced_health_check_has_empty_trace_id(harness: Harness) -> None:
    await health_pb2_grpc.HealthStub(harness.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    [line] = await harness.wait_access(1)
    assert line["method"] == "/grpc.health.v1.Health/Check"
    assert line["trace_id"] == ""
    assert harness.spans() == ()


async def test_cancelled_call_is_logged_as_cancelled(harness: Harness) -> None:
    pending = harness.stub.GetUser(user_pb2.GetUserRequest(id=cmd.SLEEP), metadata=admin_md())
    await asyncio.wait_for(harness.servicer.seen.started.wait(), 5)
    pending.cancel()
    [line] = await harness.wait_access(1)
    assert line["code"] == "CANCELLED"


async def test_deadline_is_logged_as_deadline_exceeded(harness: Harness) -> None:
    outcome = await call(harness.stub, BIDI_STREAM, cmd.SLEEP, metadata=admin_md(), deadline=0.3)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
    [line] = await harness.wait_access(1)
    assert line["code"] == "DEADLINE_EXCEEDED"
    assert (line["requests"], line["responses"]) == (3, 2)


def fake_clock(*readings: float) -> Iterator[float]:
    yield from readings


async def test_duration_comes_from_the_clock(exporter: Any, log_capture: Any) -> None:
    logger = log_capture[0]
    clock = fake_clock(10.0, 10.25)
    chain = [ErrorMappingInterceptor(logger), LoggingInterceptor(logger, clock=clock.__next__)]
    async with harness_for(
        chain, servicer=TestServicer(), exporter=exporter, metrics=ServerMetrics(), log=log_capture
    ) as running:
        await call(running.stub, UNARY)
        [line] = await running.wait_access(1)
    assert line["duration_ms"] == 250.0
    assert line["trace_id"] == ""  # no tracing layer in this chain


async def test_level_filters_lines(harness: Harness) -> None:
    harness.logger.setLevel(logging.ERROR)
    await call(harness.stub, UNARY, metadata=admin_md())
    await call(harness.stub, UNARY, cmd.BOOM, metadata=admin_md())
    await eventually(lambda: len(harness.logs.access()) >= 1)
    assert [line["code"] for line in harness.logs.access()] == ["INTERNAL"]


async def test_many_calls_many_lines(harness: Harness) -> None:
    await asyncio.gather(*(call(harness.stub, UNARY, metadata=admin_md()) for _ in range(25)))
    lines = await harness.wait_access(25)
    assert {line["code"] for line in lines} == {"OK"}
