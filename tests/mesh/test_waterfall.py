"""The trace list and the waterfall: hand-built traces, and a real retried call end to end."""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from client import HedgingPolicy, PoolConfig, UserClient
from mesh._demo import _waterfall as demo_waterfall
from mesh._receiver import TraceReceiver
from mesh._spans import (
    SpanRecord,
    SpanStore,
    Trace,
    find_trace,
    group_traces,
    has_hedge,
    has_retry,
    load_trace,
    summarize,
)
from mesh._waterfall import render_trace_list, render_waterfall, short_name, wants_ascii
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.testing import admin_token, serve
from tests.client.test_client import FirstNotExcluded, closed_port
from tests.mesh.helpers import flush, otlp_provider, shutdown
from tests.mesh.test_spans import hedged_get, retried_get, span

UNAVAILABLE, NOT_FOUND, CANCELLED = 14, 5, 1


def with_code(record: SpanRecord, code: int) -> SpanRecord:
    return replace(record, attributes={**record.attributes, "rpc.grpc.status_code": code})


def retried_trace() -> Trace:
    spans = retried_get()
    spans[1] = with_code(spans[1], UNAVAILABLE)
    spans[2] = with_code(spans[2], 0)
    [trace] = group_traces(spans).values()
    return trace


def row(text: str, label: str) -> str:
    """The one waterfall row whose span column reads ``label`` (after its indent)."""
    return rows(text)[label]


def rows(text: str) -> dict[str, str]:
    """The waterfall's rows by their span column, indent kept (the first of a repeated name)."""
    lines = text.splitlines()
    end = lines[2].index("REPLICA")
    by_label: dict[str, str] = {}
    for line in lines[3:]:
        by_label.setdefault(line[8:end].strip(), line)
    return by_label


def labels(text: str) -> list[str]:
    """The span column of every row, indent kept."""
    lines = text.splitlines()
    end = lines[2].index("REPLICA")
    return [line[8:end].rstrip() for line in lines[3:]]


@pytest.mark.parametrize("width", [60, 80, 120])
def test_every_line_fits_the_width(width: int) -> None:
    long = span("x" * 200, "9", "1", start_ms=2, end_ms=3)
    [trace] = group_traces([*retried_get(), long]).values()
    text = render_waterfall(trace, width=width, ascii_only=False)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" in text  # The long name was cut, not wrapped.


def test_each_attempt_has_its_own_bar_and_the_failed_one_is_marked() -> None:
    text = render_waterfall(retried_trace(), ascii_only=False)
    first, second = row(text, "attempt 1"), row(text, "attempt 2")
    assert first.endswith("✗ UNAVAILABLE")
    assert second.endswith("✓")
    # Bars sit where the attempts ran: the first one early, the second later.
    assert first.index("█") < second.index("█")
    logical = text.splitlines()[3]
    assert "|" + "█" * 15 + "|" in logical  # The logical call spans the whole trace.
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {'a' * 32}  GetUser  30.0 ms")
    assert lines[1] == "5 spans, 1 retries, 1 errors, replicas users-1"


def test_children_are_indented_under_their_parent_in_start_order() -> None:
    assert labels(render_waterfall(retried_trace())) == [
        "GetUser", " attempt 1", " attempt 2", "  GetUser", "   store.get_user",
    ]  # fmt: skip


def test_the_replica_column_names_server_side_spans_only() -> None:
    text = render_waterfall(retried_trace(), ascii_only=False)
    assert " users-1 " in row(text, "store.get_user")
    assert " users-1 " not in row(text, "attempt 2")


def test_start_offsets_and_durations_are_in_ms() -> None:
    line = row(render_waterfall(retried_trace(), ascii_only=False), "attempt 2")
    assert " 10.0 |" in line
    assert "|   19.0 ✓" in line


def test_a_hedge_is_its_own_row_and_the_header_counts_it_apart() -> None:
    [trace] = group_traces(hedged_get()).values()
    text = render_waterfall(trace, ascii_only=False)
    lines = text.splitlines()
    assert lines[1] == "5 spans, 0 retries, 1 hedges, 0 errors, replicas users-0,users-1"
    assert labels(text) == ["GetUser", " attempt 1", "  GetUser", " hedge 1", "  GetUser"]
    assert row(text, "attempt 1").endswith("⊘ CANCELLED")  # lost the race
    assert row(text, "hedge 1").endswith("✓")
    assert lines[5].endswith("⊘ CANCELLED")  # the loser's server span, cancelled too
    assert max(len(line) for line in lines) <= 80


def test_the_trace_list_tells_hedges_from_retries() -> None:
    [hedged] = group_traces(hedged_get()).values()
    text = render_trace_list([summarize(hedged), summarize(retried_trace())], ascii_only=False)
    _, first, second = text.splitlines()
    assert first.split()[2:7] == ["GetUser", "30.0", "5", "0", "1"]  # spans, retries, hedges
    assert first.split()[7] == "0"  # no error: the loser lost a race
    assert second.split()[2:8] == ["GetUser", "30.0", "5", "1", "0", "1"]


def test_cancelled_and_not_found_read_as_such() -> None:
    spans = retried_get()
    spans[1] = replace(with_code(spans[1], CANCELLED), status="ERROR")
    spans[3] = with_code(spans[3], NOT_FOUND)
    [trace] = group_traces(spans).values()
    text = render_waterfall(trace, ascii_only=False)
    assert row(text, "attempt 1").endswith("⊘ CANCELLED")
    assert text.splitlines()[6].endswith("✓ NOT_FOUND")  # The server span.


def test_ascii_fallback_is_pure_ascii() -> None:
    text = render_waterfall(retried_trace(), ascii_only=True)
    text.encode("ascii")
    assert row(text, "attempt 1").endswith("X UNAVAILABLE")
    assert row(text, "attempt 2").endswith("ok")
    assert "#" in row(text, "attempt 2")


def test_orphans_attach_at_the_root() -> None:
    spans = [s for s in retried_get() if s.name != "GetUser logical"]  # The root is not in yet.
    [trace] = group_traces(spans).values()
    text = render_waterfall(trace, ascii_only=False)
    assert "attempt" not in text  # No parent: no attempt numbering either.
    assert len(text.splitlines()) == 3 + 4


class _Stream(io.StringIO):
    def __init__(self, encoding: str | None) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str | None:  # type: ignore[override]
        return self._encoding


@pytest.mark.parametrize(
    ("encoding", "ascii_only"),
    [("utf-8", True), ("UTF-8", True), ("ascii", False), ("latin-1", False), (None, False)],
)
def test_wants_ascii_follows_the_stream_encoding(encoding: str | None, ascii_only: bool) -> None:
    assert wants_ascii(_Stream(encoding)) is not ascii_only


def test_short_names() -> None:
    assert short_name("/meshdemo.v1.UserService/GetUser") == "GetUser"
    assert short_name("meshdemo.v1.UserService/ListUsers logical") == "ListUsers"
    assert short_name("store.get_user") == "store.get_user"


def test_trace_list() -> None:
    many = [f"users-{n}" for n in range(12)]
    summaries = [
        summarize(retried_trace()),
        replace(summarize(retried_trace()), trace_id="b" * 32, replicas=frozenset(many)),
    ]
    text = render_trace_list(summaries, ascii_only=False)
    header, first, second = text.splitlines()
    assert header.split() == [
        "TRACE", "START", "CALL", "MS", "SPANS", "RETRY", "HEDGE", "ERR", "REPLICAS",
    ]  # fmt: skip
    assert first.startswith("a" * 16 + " ")
    assert first.split()[2:] == ["GetUser", "30.0", "5", "1", "0", "1", "users-1"]
    assert len(first) <= 80  # one replica's name still fits whole
    assert len(second) <= 80
    assert second.endswith("…")
    assert render_trace_list([]) == "no traces yet"


# --- the demo's trace ------------------------------------------------------------------------


def test_the_demo_shows_the_newest_retried_trace_before_any_hedged_one(tmp_path: Path) -> None:
    store = SpanStore(tmp_path)
    store.append(retried_get("1" * 32, start_ms=0))
    store.append(hedged_get("2" * 32, start_ms=100))  # newer, but a hedge
    heading, body = demo_waterfall(tmp_path, {})
    assert heading == "a trace that needed a retry"
    assert body == render_waterfall(load_trace(tmp_path, "1" * 32))  # as before
    assert "hedge" not in body


def test_the_demo_shows_a_hedged_trace_as_one_when_nothing_was_retried(tmp_path: Path) -> None:
    SpanStore(tmp_path).append(hedged_get("2" * 32))
    heading, body = demo_waterfall(tmp_path, {})
    assert heading == "a trace with a hedge"
    assert "0 retries, 1 hedges" in body
    assert " hedge 1 " in body and "attempt 2" not in body
    assert body.endswith("copies are cancelled (CANCELLED).")
    assert max(len(line) for line in body.splitlines()) <= 80


def test_the_demo_says_when_no_call_needed_either(tmp_path: Path) -> None:
    heading, body = demo_waterfall(tmp_path, {})
    assert (heading, body) == ("a trace that needed a retry or a hedge",
                               "no trace reached the receiver")  # fmt: skip
    SpanStore(tmp_path).append([span("plain", "9")])
    heading, body = demo_waterfall(tmp_path, {})
    assert heading == "a trace that needed a retry or a hedge"
    assert body.startswith("no call needed a retry or a hedge this run")


# --- a real retried call ---------------------------------------------------------------------


async def test_a_real_retried_call_draws_both_attempts(receiver: TraceReceiver) -> None:
    """A static target whose first address is dead: the first attempt fails, the second wins.

    Hedging is off, so the second attempt is the retry loop's (with hedging on,
    the next copy would be a hedge: see the test below).
    """
    server_provider = otlp_provider(
        receiver.endpoint,
        {"service.name": "meshdemo-user-service", "service.instance.id": "users-0"},
    )
    client_provider = otlp_provider(receiver.endpoint, {"service.name": "meshdemo-client"})
    dead = closed_port("127.0.0.2")
    try:
        async with serve(
            "127.0.0.3", tracer_provider=server_provider, replica_name="users-0"
        ) as live:
            user_id = await _create_user(live.address)
            async with UserClient(
                f"static:///{dead},{live.address}",
                token=admin_token(),
                tracer_provider=client_provider,
                policy=FirstNotExcluded(),
                pool=PoolConfig(health_check=False),
                hedging=False,
            ) as client:
                assert (await client.get_user(user_id)).id == user_id
            assert await flush(server_provider)
        assert await flush(client_provider)
    finally:
        await shutdown(client_provider)
        await shutdown(server_provider)
    trace = find_trace(receiver.store.state_dir, has_retry)
    assert trace is not None
    summary = summarize(trace)
    assert (summary.retries, summary.replicas) == (1, frozenset({"users-0"}))
    # Attempts name the replica they dialled; the dead one has no server span to say it.
    names = {dead: "users-9", live.address: "users-0"}
    text = render_waterfall(trace, ascii_only=False, names=names)
    assert row(text, "attempt 1").endswith("✗ UNAVAILABLE")
    assert " users-9 " in row(text, "attempt 1")
    assert row(text, "attempt 2").endswith("✓")
    assert " users-0 " in row(text, "attempt 2")
    assert "users-0" in row(text, "store.get_user")
    assert max(len(line) for line in text.splitlines()) <= 80
    columns = render_trace_list([summary], ascii_only=False).splitlines()[1].split()
    assert columns[2] == "GetUser"
    assert columns[4:] == ["5", "1", "0", "1", "users-0"]  # spans, retries, hedges, errors, …


@pytest.mark.parametrize("first", ["slow", "dead"])
async def test_a_real_hedged_call_draws_the_hedge_apart(
    receiver: TraceReceiver, first: str
) -> None:
    """The first copy goes to a slow (or dead) replica, a hedge to a quick one, which wins.

    Slow: the first copy is cancelled once the hedge answered (it lost the race);
    dead: it failed UNAVAILABLE and the hedge went at once. Either way a hedge,
    not a retry.
    """
    server_provider = otlp_provider(receiver.endpoint, {"service.name": "meshdemo-user-service"})
    client_provider = otlp_provider(receiver.endpoint, {"service.name": "meshdemo-client"})
    try:
        async with contextlib.AsyncExitStack() as stack:
            live = await stack.enter_async_context(
                serve("127.0.0.3", tracer_provider=server_provider, replica_name="users-1")
            )
            if first == "slow":
                slow = await stack.enter_async_context(
                    serve(
                        "127.0.0.2",
                        tracer_provider=server_provider,
                        replica_name="users-0",
                        fault_delay=1.0,
                    )
                )
                first_address = slow.address
            else:
                first_address = closed_port("127.0.0.2")
            user_id = await _create_user(live.address)
            async with UserClient(
                f"static:///{first_address},{live.address}",
                token=admin_token(),
                tracer_provider=client_provider,
                policy=FirstNotExcluded(),
                pool=PoolConfig(health_check=False),
                hedging=HedgingPolicy(delay=0.05),
            ) as client:
                got = await asyncio.wait_for(client.get_user(user_id), 3)
                assert got.id == user_id
                assert (client.stats().retries, client.stats().hedges) == (0, 1)
            assert await flush(server_provider)
        assert await flush(client_provider)
    finally:
        await shutdown(client_provider)
        await shutdown(server_provider)
    trace = find_trace(receiver.store.state_dir, has_hedge)
    assert trace is not None
    assert not has_retry(trace)
    summary = summarize(trace)
    assert (summary.retries, summary.hedges) == (0, 1)
    # The dead copy's UNAVAILABLE is an error; the slow copy's cancel on the client is none
    # (whatever its server span, ended by the cancel, recorded).
    spans_in_error = sum(1 for s in trace.spans if s.is_error)
    assert summary.errors == (1 if first == "dead" else spans_in_error - 1)
    names = {first_address: "users-0", live.address: "users-1"}
    text = render_waterfall(trace, ascii_only=False, names=names)
    assert text.splitlines()[1].startswith(f"{summary.span_count} spans, 0 retries, 1 hedges, ")
    lost = "⊘ CANCELLED" if first == "slow" else "✗ UNAVAILABLE"
    assert row(text, "attempt 1").endswith(lost)
    assert " users-0 " in row(text, "attempt 1")
    assert row(text, "hedge 1").endswith("✓")
    assert " users-1 " in row(text, "hedge 1")
    assert "attempt 2" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


async def _create_user(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await user_pb2_grpc.UserServiceStub(channel).CreateUser(
            user_pb2.CreateUserRequest(name="Ada", email="ada@example.com", age=36),
            metadata=(("authorization", f"Bearer {admin_token()}"),),
        )
    return reply.user.id
