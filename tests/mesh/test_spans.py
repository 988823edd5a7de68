"""The span store on disk and the trace summaries built from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from mesh._spans import (
    SPANS_FILE,
    AttributeValue,
    SpanEvent,
    SpanRecord,
    SpanStore,
    TraceLookupError,
    find_trace,
    group_traces,
    has_hedge,
    has_retry,
    is_hedge,
    load_trace,
    read_spans,
    recent_traces,
    summarize,
)

MS = 1_000_000
GRPC: Mapping[str, AttributeValue] = {"rpc.system": "grpc"}


def span(
    name: str,
    span_id: str,
    parent: str = "",
    *,
    trace_id: str = "a" * 32,
    kind: str = "INTERNAL",
    start_ms: int = 0,
    end_ms: int = 10,
    service: str = "meshdemo-client",
    instance: str = "",
    status: str = "UNSET",
    events: tuple[SpanEvent, ...] = (),
    attributes: Mapping[str, AttributeValue] | None = None,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id.rjust(16, "0"),
        parent_span_id=parent.rjust(16, "0") if parent else "",
        name=name,
        kind=kind,
        service=service,
        instance=instance,
        start_ns=1_700_000_000_000 * MS + start_ms * MS,
        end_ns=1_700_000_000_000 * MS + end_ms * MS,
        status=status,
        events=events,
        attributes=dict(attributes or {}),
    )


def retried_get(trace_id: str = "a" * 32, start_ms: int = 0) -> list[SpanRecord]:
    """A GetUser whose first attempt failed UNAVAILABLE and second reached users-1."""
    retry = SpanEvent("retry", 0, {"retry": 1, "code": "UNAVAILABLE"})
    return [
        span("GetUser logical", "1", start_ms=start_ms, end_ms=start_ms + 30, events=(retry,),
             trace_id=trace_id),
        span("/GetUser", "2", "1", kind="CLIENT", start_ms=start_ms + 1, end_ms=start_ms + 5,
             status="ERROR", attributes=GRPC, trace_id=trace_id),
        span("/GetUser", "3", "1", kind="CLIENT", start_ms=start_ms + 10, end_ms=start_ms + 29,
             attributes=GRPC, trace_id=trace_id),
        span("GetUser", "4", "3", kind="SERVER", start_ms=start_ms + 12, end_ms=start_ms + 28,
             service="meshdemo-user-service", instance="users-1", trace_id=trace_id),
        span("store.get_user", "5", "4", kind="CLIENT", start_ms=start_ms + 13,
             end_ms=start_ms + 20, service="meshdemo-user-service", instance="users-1",
             attributes={"db.system": "sqlite"}, trace_id=trace_id),
    ]  # fmt: skip


def hedged_get(trace_id: str = "c" * 32, start_ms: int = 0) -> list[SpanRecord]:
    """A GetUser whose first copy, on a slow users-0, was outrun by a hedge to users-1.

    As the client records it: both copies carry ``meshdemo.hedge.number``, the
    loser ends CANCELLED (ERROR) with ``meshdemo.hedge.cancelled``, the logical
    span has a ``hedge`` event and no ``retry`` event.
    """
    hedge = SpanEvent("hedge", 0, {"meshdemo.hedge.number": 2})
    first = {
        **GRPC,
        "meshdemo.hedge.number": 1,
        "rpc.grpc.status_code": 1,
        "meshdemo.cancelled": True,
        "meshdemo.hedge.cancelled": True,
    }
    second = {**GRPC, "meshdemo.hedge.number": 2, "rpc.grpc.status_code": 0}
    return [
        span("GetUser logical", "1", start_ms=start_ms, end_ms=start_ms + 30, events=(hedge,),
             trace_id=trace_id),
        span("/GetUser", "2", "1", kind="CLIENT", start_ms=start_ms + 1, end_ms=start_ms + 29,
             status="ERROR", attributes=first, trace_id=trace_id),
        span("GetUser", "3", "2", kind="SERVER", start_ms=start_ms + 2, end_ms=start_ms + 29,
             service="meshdemo-user-service", instance="users-0", trace_id=trace_id,
             attributes={"rpc.grpc.status_code": 1}),
        span("/GetUser", "4", "1", kind="CLIENT", start_ms=start_ms + 11, end_ms=start_ms + 28,
             attributes=second, trace_id=trace_id),
        span("GetUser", "5", "4", kind="SERVER", start_ms=start_ms + 12, end_ms=start_ms + 27,
             service="meshdemo-user-service", instance="users-1", trace_id=trace_id),
    ]  # fmt: skip


def test_records_round_trip_through_json() -> None:
    record = retried_get()[0]
    assert SpanRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError, match="not a span record"):
        SpanRecord.from_json('{"trace_id": "x"}')


def test_append_then_read_in_order(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "state")
    assert read_spans(tmp_path / "state") == []
    spans = retried_get()
    assert store.append(spans[:2]) == 2
    assert store.append([]) == 0
    store.append(spans[2:])
    assert store.read() == spans


def test_a_partial_last_line_and_garbage_are_skipped(tmp_path: Path) -> None:
    store = SpanStore(tmp_path)
    spans = retried_get()
    store.append(spans[:2])
    with open(store.path, "a", encoding="utf-8") as stream:
        stream.write("not json\n")
        stream.write('{"also": "not a span"}\n')
        stream.write(spans[2].to_json()[:40])  # A writer half-way through a line.
    assert read_spans(tmp_path) == spans[:2]


def test_the_file_rotates_past_its_limit_and_disk_use_stays_bounded(tmp_path: Path) -> None:
    one = span("s10", "a")
    line_bytes = len(one.to_json()) + 1
    store = SpanStore(tmp_path, max_bytes=line_bytes * 10)
    for n in range(95):
        store.append([span(f"s{n}", f"{n + 1:x}")])
    assert store.rotations >= 8
    assert store.rotated_path.exists()
    total = store.path.stat().st_size + store.rotated_path.stat().st_size
    assert total <= 2 * store.max_bytes + line_bytes
    names = [s.name for s in read_spans(tmp_path)]
    # The newest spans survive, oldest first; the oldest are gone.
    assert names == [f"s{n}" for n in range(95 - len(names), 95)]
    assert "s0" not in names
    with pytest.raises(ValueError, match="positive"):
        SpanStore(tmp_path, max_bytes=0)


def test_summary_of_a_retried_call() -> None:
    [trace] = group_traces(retried_get()).values()
    summary = summarize(trace)
    assert summary.root_name == "GetUser logical"
    assert summary.span_count == 5
    assert summary.duration_ns == 30 * MS
    assert summary.replicas == {"users-1"}
    assert summary.retries == 1
    assert summary.errors == 1
    assert summary.services == {"meshdemo-client", "meshdemo-user-service"}
    assert has_retry(trace)


def test_a_hedged_call_counts_a_hedge_not_a_retry_nor_an_error() -> None:
    [trace] = group_traces(hedged_get()).values()
    summary = summarize(trace)
    assert (summary.retries, summary.hedges) == (0, 1)
    assert summary.errors == 0  # The cancelled loser lost a race: nothing failed.
    assert summary.replicas == {"users-0", "users-1"}
    assert has_hedge(trace)
    assert not has_retry(trace)
    assert [is_hedge(s) for s in trace.spans] == [False, False, False, True, False]
    # The retried call is the other way round.
    [retried] = group_traces(retried_get()).values()
    assert (summarize(retried).retries, summarize(retried).hedges) == (1, 0)
    assert not has_hedge(retried)


def test_a_hedge_after_a_failed_copy_is_a_hedge_and_the_failure_an_error() -> None:
    spans = hedged_get()
    failed = {**GRPC, "meshdemo.hedge.number": 1, "rpc.grpc.status_code": 14}
    spans[1] = replace(spans[1], end_ns=spans[1].start_ns + 5 * MS, attributes=failed)
    [trace] = group_traces([s for s in spans if s.span_id != "3".rjust(16, "0")]).values()
    summary = summarize(trace)
    assert (summary.retries, summary.hedges, summary.errors) == (0, 1, 1)


def test_hedge_events_count_when_copy_spans_are_missing() -> None:
    hedges = tuple(SpanEvent("hedge", 0, {"meshdemo.hedge.number": n}) for n in (2, 3))
    [trace] = group_traces([span("GetUser logical", "1", events=hedges)]).values()
    assert (summarize(trace).hedges, summarize(trace).retries) == (2, 0)


def test_a_retried_stream_whose_first_responses_were_hedged_counts_both() -> None:
    """ListUsers: each attempt of the retry loop is a first copy (number 1), hedged again."""
    copy = [{**GRPC, "meshdemo.hedge.number": n} for n in (1, 2, 1)]
    spans = [
        span("ListUsers logical", "1", events=(SpanEvent("retry", 0), SpanEvent("hedge", 0))),
        *(span("/ListUsers", f"{n + 2}", "1", kind="CLIENT", start_ms=n, attributes=a)
          for n, a in enumerate(copy)),
    ]  # fmt: skip
    [trace] = group_traces(spans).values()
    assert (summarize(trace).retries, summarize(trace).hedges) == (1, 1)


def test_retry_events_count_when_attempt_spans_are_missing() -> None:
    retries = tuple(SpanEvent("retry", 0, {"retry": n}) for n in (1, 2))
    [trace] = group_traces([span("GetUser logical", "1", events=retries)]).values()
    assert summarize(trace).retries == 2


def test_a_call_with_one_attempt_has_no_retry() -> None:
    spans = [s for s in retried_get() if s.span_id != "2".rjust(16, "0")]
    [trace] = group_traces(spans).values()
    assert summarize(trace).retries == 1  # The logical span's retry event still says so.
    plain = [span("L", "1"), span("/A", "2", "1", kind="CLIENT", attributes=GRPC)]
    [trace] = group_traces(plain).values()
    assert summarize(trace).retries == 0
    assert not has_retry(trace)


def test_store_calls_are_client_spans_but_not_attempts() -> None:
    db = {"db.system": "sqlite"}
    chunks = [
        span("store.list_users", f"{n + 3}", "2", kind="CLIENT", attributes=db) for n in (0, 1, 2)
    ]
    server = span("ListUsers", "2", "1", kind="SERVER", instance="users-0")
    [trace] = group_traces([span("ListUsers logical", "1"), server, *chunks]).values()
    assert summarize(trace).retries == 0


def test_orphans_and_duplicates() -> None:
    spans = [*retried_get()[1:], retried_get()[1]]  # The root has not arrived; one span twice.
    [trace] = group_traces(spans).values()
    assert len(trace.spans) == 4
    assert trace.root().span_id == "2".rjust(16, "0")  # The earliest orphan.
    assert [s.span_id[-1] for s in trace.children()[""]] == ["2", "3"]


def test_recent_find_and_load(tmp_path: Path) -> None:
    store = SpanStore(tmp_path)
    store.append(retried_get("1" * 32, start_ms=0))
    store.append([span("plain", "9", trace_id="2" * 32, start_ms=100, end_ms=110)])
    store.append([span("plain", "8", trace_id="3" * 32, start_ms=200, end_ms=210)])
    store.append(hedged_get("4" * 32, start_ms=150))
    assert [s.trace_id[0] for s in recent_traces(tmp_path)] == ["3", "4", "2", "1"]
    assert [s.trace_id[0] for s in recent_traces(tmp_path, limit=2)] == ["3", "4"]
    found = find_trace(tmp_path, has_retry)
    assert found is not None
    assert found.trace_id == "1" * 32  # Not the newer hedged one.
    hedged = find_trace(tmp_path, has_hedge)
    assert hedged is not None
    assert hedged.trace_id == "4" * 32
    # Fallbacks in order: the first predicate that any trace satisfies wins.
    assert find_trace(tmp_path, has_retry, has_hedge) == found
    assert find_trace(tmp_path, lambda t: False, has_hedge) == hedged
    assert find_trace(tmp_path, lambda t: False, lambda t: False) is None
    assert find_trace(tmp_path, lambda t: False) is None
    assert load_trace(tmp_path, "22").trace_id == "2" * 32
    assert load_trace(tmp_path, "3" * 32).trace_id == "3" * 32


def test_load_trace_says_why_it_failed(tmp_path: Path) -> None:
    store = SpanStore(tmp_path)
    store.append(
        [span("x", "1", trace_id="ab" + "0" * 30), span("y", "2", trace_id="ac" + "0" * 30)]
    )
    with pytest.raises(TraceLookupError, match="ambiguous"):
        load_trace(tmp_path, "a")
    with pytest.raises(TraceLookupError, match=f"no trace 'ff'.*{SPANS_FILE}"):
        load_trace(tmp_path, "ff")
    with pytest.raises(TraceLookupError, match="empty"):
        load_trace(tmp_path, " ")
    assert load_trace(tmp_path, "AB").spans[0].name == "x"
