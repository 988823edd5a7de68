"""The CLI exports its spans where OTEL_EXPORTER_OTLP_ENDPOINT says, in the replica's trace.

Everything real: the mesh's OTLP receiver on loopback, an in-process replica
exporting to it through the OTLP exporter, and the CLI in the test's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from client.cli import EXIT_OK, EXIT_RPC
from mesh._receiver import TraceReceiver
from mesh._spans import SpanStore, Trace, group_traces, read_spans
from service.testing import InProcessServer, admin_token, serve
from tests.cli.conftest import Cli
from tests.mesh.helpers import flush, free_port, otlp_provider, shutdown

OTEL_VARS = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
)


@dataclass
class Traced:
    receiver: TraceReceiver
    replica: InProcessServer
    provider: TracerProvider
    state_dir: Path

    async def traces(self) -> list[Trace]:
        """Every trace received, oldest first, once the replica has flushed its spans.

        The CLI flushes its own before it returns.
        """
        assert await flush(self.provider)
        return sorted(group_traces(read_spans(self.state_dir)).values(), key=lambda t: t.start_ns)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    """A receiver, and a replica named users-0 exporting its spans to it over OTLP."""
    receiver = TraceReceiver(SpanStore(tmp_path / "state"))
    await receiver.start()
    provider = otlp_provider(
        receiver.endpoint,
        {"service.name": "meshdemo-user-service", "service.instance.id": "users-0"},
    )
    try:
        async with serve("127.0.0.2", tracer_provider=provider, replica_name="users-0") as replica:
            yield Traced(receiver, replica, provider, tmp_path / "state")
    finally:
        await shutdown(provider)
        await receiver.stop()


def cli_for(traced: Traced, monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> Cli:
    env = {"MESH_TARGET": f"static:///{traced.replica.address}", "MESH_TOKEN": admin_token()}
    if endpoint is not None:
        # The SDK reads the process environment; the CLI decides on the one it is given.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    return Cli(env)


async def test_get_and_create_spans_join_the_replica_trace(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_for(traced, monkeypatch, traced.receiver.endpoint)
    created = await cli("create", "--name", "Ada", "--email", "ada@example.com", "--age", "36")
    assert created.code == EXIT_OK, created.err
    user_id = created.out.split()[0]
    got = await cli("get", user_id)
    assert got.code == EXIT_OK, got.err
    create_trace, get_trace = await traced.traces()
    for trace, method, store_call in (
        (create_trace, "CreateUser", "store.create_user"),
        (get_trace, "GetUser", "store.get_user"),
    ):
        by_name = {s.name: s for s in trace.spans}
        logical = by_name[f"meshdemo.v1.UserService/{method} logical"]
        attempt = by_name[f"/meshdemo.v1.UserService/{method}"]
        server = by_name[f"meshdemo.v1.UserService/{method}"]
        store = by_name[store_call]
        assert (logical.service, logical.kind, logical.parent_span_id) == (
            "meshdemo-client",
            "INTERNAL",
            "",
        )
        assert (attempt.kind, attempt.parent_span_id) == ("CLIENT", logical.span_id)
        assert (server.kind, server.parent_span_id) == ("SERVER", attempt.span_id)
        assert (server.service, server.instance) == ("meshdemo-user-service", "users-0")
        assert store.parent_span_id == server.span_id


async def test_without_an_endpoint_the_cli_makes_no_span(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_for(traced, monkeypatch, None)
    result = await cli("get", "no-such-user")
    assert result.code == EXIT_RPC
    assert all(s.service != "meshdemo-client" for t in await traced.traces() for s in t.spans)


async def test_a_failed_command_still_exports_its_spans(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_for(traced, monkeypatch, traced.receiver.endpoint)
    result = await cli("get", "no-such-user")
    assert result.code == EXIT_RPC
    client_spans = [s for s in read_spans(traced.state_dir) if s.service == "meshdemo-client"]
    assert {s.kind for s in client_spans} == {"INTERNAL", "CLIENT"}


async def test_a_collector_that_is_down_does_not_hold_up_the_command(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = cli_for(traced, monkeypatch, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = await cli("get", "no-such-user")
    assert result.code == EXIT_RPC
    assert time.monotonic() - started < 3.0


async def test_an_interrupted_command_still_exports_its_spans(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C cancels the command (asyncio.run does so on SIGINT); its spans still go out."""
    cli = cli_for(traced, monkeypatch, traced.receiver.endpoint)
    async with serve("127.0.0.3", fault_delay=5.0) as slow:
        cli.env["MESH_TARGET"] = f"static:///{slow.address}"
        command = asyncio.create_task(cli("get", "some-user"))
        await asyncio.sleep(0.5)
        command.cancel()
        with pytest.raises(asyncio.CancelledError):
            await command
    attempts = [s for s in read_spans(traced.state_dir) if s.kind == "CLIENT"]
    assert [(s.service, s.attributes.get("meshdemo.cancelled")) for s in attempts] == [
        ("meshdemo-client", True)
    ]
