"""Start-up, health, limits and the shutdown protocol of real replicas."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.config import ServiceConfig
from service.testing import ReplicaProcess, admin_token, reader_token, serve
from tests.aio_stubs import EOF, read

READER = (("authorization", f"Bearer {reader_token()}"),)
ROOT = Path(__file__).resolve().parents[2]
HAVE_GRPC_JS = (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir()
SERVICE = "meshdemo.v1.UserService"


def _run_service(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_lists_every_setting_and_its_variable() -> None:
    out = _run_service("--help", env={}).stdout
    import dataclasses

    for f in dataclasses.fields(ServiceConfig):
        assert f.metadata["env"] in out, f.name
    assert "--port" in out and "--store" in out and "--metrics-port" in out and "OTEL_" in out


def test_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    result = _run_service(
        "--port", "0", "--metrics-port", "-1", "--store", f"sqlite:///{tmp_path}/x.db", env={}
    )
    assert result.returncode == 2
    assert "MESH_AUTH_SECRET" in result.stdout + result.stderr


def test_invalid_flag_value_names_flag_and_variable() -> None:
    result = _run_service("--port", "70000", env={})
    assert result.returncode == 2
    assert "--port / MESH_PORT" in result.stderr


@pytest.mark.slow
async def test_auth_switched_off_explicitly_starts_and_warns(tmp_path: Path) -> None:
    replica = ReplicaProcess(
        "127.0.0.2",
        store_url=f"sqlite:///{tmp_path}/a.db",
        env={"MESH_AUTH_SECRET": ""},
        args=["--no-auth"],
    )
    async with replica, grpc.aio.insecure_channel(replica.address) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(user_pb2.GetUserRequest(id="x"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # no token needed
    warnings = [e for e in replica.logs if e.get("level") == "WARNING"]
    assert any("switched off" in e.get("message", "") for e in warnings)


async def _watch(address: str) -> AsyncGenerator[int, None]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        async for reply in stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE)):
            yield reply.status


@pytest.mark.slow
async def test_sigterm_turns_not_serving_drains_finishes_in_flight_and_exits_zero(
    tmp_path: Path,
) -> None:
    replica = ReplicaProcess(
        "127.0.0.2",
        store_url=f"sqlite:///{tmp_path}/s.db",
        env={"MESH_DRAIN_DELAY": "1.0", "MESH_SHUTDOWN_GRACE": "5"},
    )
    async with replica:
        statuses: list[int] = []
        watch = _watch(replica.address)
        statuses.append(await anext(watch))
        async with grpc.aio.insecure_channel(replica.address) as ch:
            chat = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=READER)
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="before")))
            assert (await read(chat)).message.text == "before"
            exit_code = asyncio.create_task(replica.terminate())
            statuses.append(await asyncio.wait_for(anext(watch), 5))
            # In the drain and grace periods the open stream keeps working.
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="during")))
            assert (await read(chat)).message.text == "during"
            await chat.done_writing()
            assert await chat.code() == grpc.StatusCode.OK
            assert await exit_code == 0
        await watch.aclose()
    assert statuses == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    messages = [e.get("message") for e in replica.logs]
    assert messages.index("draining") < messages.index("stopping") < messages.index("stopped")


async def test_graceful_stop_lets_in_flight_streams_finish_within_grace() -> None:
    async with serve("127.0.0.1", shutdown_grace=3.0) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            chat = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=READER)
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="a")))
            await chat.read()
            stopping = asyncio.create_task(server.replica.shutdown(drain_delay=0))
            await asyncio.sleep(0.2)
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="b")))
            assert (await read(chat)).message.text == "b"
            await chat.done_writing()
            assert await chat.code() == grpc.StatusCode.OK
            await stopping


async def test_open_health_watches_end_with_ok_instead_of_holding_the_grace() -> None:
    # A watcher (a client, the local mesh) must not keep a stopping replica for
    # its whole shutdown grace: after the drain its Watch ends, and stop returns.
    async with serve(shutdown_grace=30.0) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            first = await watch.read()
            loop = asyncio.get_running_loop()
            started = loop.time()
            stopping = asyncio.create_task(server.replica.shutdown(drain_delay=0.2))
            statuses = [first.status]
            while (reply := await watch.read()) is not EOF:
                statuses.append(reply.status)
            await asyncio.wait_for(stopping, 10)
            assert await watch.code() == grpc.StatusCode.OK
            assert loop.time() - started < 10  # far below the 30 s grace
    response = health_pb2.HealthCheckResponse
    assert statuses == [response.SERVING, response.NOT_SERVING]


async def test_beyond_max_concurrent_rpcs_is_resource_exhausted_but_health_answers() -> None:
    async with serve("127.0.0.1", max_concurrent_rpcs=2) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            chats = [stub.Chat(None, metadata=READER) for _ in range(2)]
            for chat in chats:
                await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="hold")))
                await chat.read()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetUser(user_pb2.GetUserRequest(id="x"), metadata=READER)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # grpc-stubs types this as RpcError's tuple of _Metadatum; aio gives Metadata.
            trailing = cast(grpc.aio.Metadata, caught.value.trailing_metadata())
            assert ("grpc-retry-pushback-ms", "1000") in tuple(trailing)
            # The cap is the application's: health is never counted against it.
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            for chat in chats:
                await chat.done_writing()
                await chat.code()


async def test_connections_older_than_max_age_are_closed() -> None:
    async with serve("127.0.0.1", max_connection_age=0.5, max_connection_age_grace=0.5) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            chat = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=READER)
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="x")))
            await chat.read()
            # Past age + grace the stream is cut so the client must reconnect
            # (and re-resolve); new calls on the same channel still work.
            assert await asyncio.wait_for(chat.code(), 10) == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await user_pb2_grpc.UserServiceStub(ch).GetUser(
                    user_pb2.GetUserRequest(id="x"), metadata=READER
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services() -> None:
    async with serve("127.0.0.1") as server:

        def list_services() -> list[str]:
            with grpc.insecure_channel(server.address) as ch:
                return list(ProtoReflectionDescriptorDatabase(ch).get_services())

        services = await asyncio.to_thread(list_services)
    assert {SERVICE, "grpc.health.v1.Health"} <= set(services)


async def test_metrics_endpoint_counts_calls() -> None:
    async with serve("127.0.0.1", metrics_port=0) as server:
        assert server.replica.metrics_port
        async with grpc.aio.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await user_pb2_grpc.UserServiceStub(ch).GetUser(
                    user_pb2.GetUserRequest(id="nope"), metadata=READER
                )
        url = f"http://127.0.0.1:{server.replica.metrics_port}/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
    assert 'grpc_method="GetUser"' in body
    assert 'grpc_code="NOT_FOUND"' in body


async def test_a_client_on_another_grpc_implementation_calls_everything() -> None:
    root = ROOT
    if not HAVE_GRPC_JS:
        pytest.skip("grpc-js not installed: run `npm ci` (CI does)")
    async with serve("127.0.0.1") as server:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(root / "tests" / "interop" / "client.mjs"),
            server.address,
            admin_token(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["fetched"]["id"] == seen["created"]["id"]
    assert seen["created"]["roles"] == ["ROLE_ADMIN"]
    assert seen["listed"] == 1 and seen["listed_tokens"]
    assert seen["batch"] == 2
    assert seen["chat"][0]["text"] == "hello from grpc-js" and seen["chat"][0]["has_timestamp"]
    assert seen["not_found_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert seen["health"] == "SERVING"
    assert {SERVICE, "grpc.health.v1.Health"} <= set(seen["services"])


POSTGRES_URL = os.environ.get("MESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _postgres_admin() -> Any:
    """An autocommit connection to the shared server; skip (or fail in CI) without one."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return await psycopg.AsyncConnection.connect(
            POSTGRES_URL, autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("MESH_TEST_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")


@pytest.mark.postgres
async def test_health_follows_the_store_when_the_database_goes_away() -> None:
    admin = await _postgres_admin()
    name = f"meshdemo_health_{uuid.uuid4().hex[:10]}"
    base = POSTGRES_URL.rsplit("/", 1)[0]
    async with admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            async with serve(
                "127.0.0.1", store_url=f"{base}/{name}", health_interval=0.2
            ) as server:
                watch = _watch(server.address)
                assert await anext(watch) == health_pb2.HealthCheckResponse.SERVING
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                assert await asyncio.wait_for(anext(watch), 10) == (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                assert await asyncio.wait_for(anext(watch), 15) == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                await watch.aclose()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_fault_delay_slows_user_calls_but_not_health() -> None:
    loop = asyncio.get_running_loop()
    async with serve("127.0.0.1", fault_delay=0.3) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            start = loop.time()
            with pytest.raises(grpc.aio.AioRpcError):
                await user_pb2_grpc.UserServiceStub(ch).GetUser(
                    user_pb2.GetUserRequest(id="x"), metadata=READER
                )
            chat = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=READER)
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="slow")))
            assert (await read(chat)).message.text == "slow"
            await chat.done_writing()
            # The delay is a floor that the two calls cannot beat.
            assert loop.time() - start >= 0.6
    async with serve("127.0.0.1", fault_delay=30) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            # Health is never delayed: it answers well within a deadline
            # that every UserService call would miss.
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await user_pb2_grpc.UserServiceStub(ch).GetUser(
                    user_pb2.GetUserRequest(id="x"), metadata=READER, timeout=0.5
                )
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.postgres
async def test_a_replica_started_before_its_database_becomes_serving_when_it_appears() -> None:
    admin = await _postgres_admin()
    name = f"meshdemo_late_{uuid.uuid4().hex[:10]}"
    base = POSTGRES_URL.rsplit("/", 1)[0]
    async with admin:
        try:
            async with serve(
                "127.0.0.1", store_url=f"{base}/{name}?pool_timeout=1", health_interval=0.2
            ) as server:
                watch = _watch(server.address)
                assert await anext(watch) == health_pb2.HealthCheckResponse.NOT_SERVING
                async with grpc.aio.insecure_channel(server.address) as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await user_pb2_grpc.UserServiceStub(ch).GetUser(
                            user_pb2.GetUserRequest(id="x"), metadata=READER
                        )
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                await admin.execute(f'CREATE DATABASE "{name}"')
                assert await asyncio.wait_for(anext(watch), 15) == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                await watch.aclose()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _keepalive_options(interval_ms: int) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


async def _chat_survives(address: str, options: list[tuple[str, int]], idle: float) -> bool:
    async with grpc.aio.insecure_channel(address, options=options) as ch:
        chat = user_pb2_grpc.UserServiceStub(ch).Chat(None, metadata=READER)
        await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="open")))
        await chat.read()
        await asyncio.sleep(idle)  # only keepalive pings cross the connection now
        try:
            await chat.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="still?")))
            reply = await chat.read()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return False
        await chat.done_writing()
        return reply is not EOF and await chat.code() == grpc.StatusCode.OK


@pytest.mark.slow
async def test_keepalive_pings_at_the_policy_interval_keep_an_idle_stream_alive() -> None:
    # The policy is scaled down (1 s instead of 10 s) to keep the test short;
    # the server accepts pings at that cadence on a stream that carries no data.
    async with serve("127.0.0.1", keepalive_min_ping_interval=1.0) as server:
        assert await _chat_survives(server.address, _keepalive_options(1000), idle=3.5)
