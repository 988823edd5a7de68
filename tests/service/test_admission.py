"""Admission: caps on UserService calls that never starve health, reflection or other callers.

Real replicas on 127.0.0.1 port 0; the counting rules are also checked on
:class:`~service.interceptors.Admission` directly.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client._retry import pushback_delay
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.config import ConfigError, ServiceConfig, load_config
from service.errors import ResourceExhausted
from service.interceptors import Admission, AdmissionLimits, CallKind, MethodInfo
from service.server import admission_limits, server_options
from service.testing import InProcessServer, admin_token, reader_token, serve
from tests.aio_stubs import read

Md = tuple[tuple[str, str], ...]


def _as(sub: str) -> Md:
    return (("authorization", f"Bearer {reader_token(sub)}"),)


ADMIN: Md = (("authorization", f"Bearer {admin_token()}"),)


def _chat_request(text: str = "hold") -> user_pb2.ChatRequest:
    return user_pb2.ChatRequest(message=user_pb2.ChatMessage(text=text))


async def _open_chat(
    stub: user_pb2_grpc.UserServiceAsyncStub, md: Md
) -> grpc.aio.StreamStreamCall[user_pb2.ChatRequest, user_pb2.ChatResponse]:
    """A Chat that the server has admitted: one message sent and echoed."""
    call = stub.Chat(None, metadata=md)
    await call.write(_chat_request())
    await asyncio.wait_for(call.read(), 5)
    return call


async def _refusal(call: grpc.aio.StreamStreamCall) -> grpc.aio.AioRpcError:
    # Refused before any message is read: the first read gets the status.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    return caught.value


async def _counts_back_to_zero(admission: Admission) -> None:
    for _ in range(100):  # the server may end a call just after the client saw it end
        if admission.total == 0 and not +admission.by_kind and not admission.by_principal:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"admission counts leaked: {admission!r}")


def _admission(server: InProcessServer) -> Admission:
    assert server.replica.admission is not None
    return server.replica.admission


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=1.0
    )
    return int(reply.status)


def _assert_exhausted_with_pushback(err: grpc.aio.AioRpcError, cap_words: str) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert cap_words in (err.details() or "")
    assert pushback_delay(err) == 1.0


# -- the counting rules ------------------------------------------------------------------------


def test_limits_refuse_counts_below_one() -> None:
    for name in ("max_calls", "max_chat_streams", "max_list_streams", "max_unary"):
        with pytest.raises(ValueError, match=name):
            AdmissionLimits(**{name: 0})
    with pytest.raises(ValueError, match="max_streams_per_principal"):
        AdmissionLimits(max_streams_per_principal=0)
    with pytest.raises(ValueError, match="chat_idle_timeout"):
        AdmissionLimits(chat_idle_timeout=-1)


def test_kinds_follow_the_methods() -> None:
    def kind(name: str, kind: str) -> CallKind:
        return CallKind.of(MethodInfo(f"/meshdemo.v1.UserService/{name}", "", name, kind))

    assert kind("Chat", "bidi_stream") is CallKind.CHAT
    assert kind("ListUsers", "server_stream") is CallKind.LIST
    assert kind("GetUser", "unary") is CallKind.UNARY
    assert kind("BatchCreateUsers", "client_stream") is CallKind.UNARY


def test_each_cap_refuses_and_names_itself() -> None:
    admission = Admission(
        AdmissionLimits(max_calls=4, max_chat_streams=3, max_list_streams=1, max_unary=2,
                        max_streams_per_principal=2)
    )  # fmt: skip
    admission.admit(CallKind.LIST, "a")
    with pytest.raises(ResourceExhausted, match="at most 1 ListUsers streams"):
        admission.admit(CallKind.LIST, "b")
    admission.admit(CallKind.CHAT, "a")
    with pytest.raises(ResourceExhausted, match="at most 2 open Chat and ListUsers streams"):
        admission.admit(CallKind.CHAT, "a")
    admission.admit(CallKind.UNARY, "a")  # unary calls do not count per principal
    admission.admit(CallKind.UNARY, "a")
    with pytest.raises(ResourceExhausted, match="at most 4 calls"):
        admission.admit(CallKind.CHAT, None)
    assert admission.total == 4


def test_a_refusal_counts_nothing_and_release_forgets_the_caller() -> None:
    admission = Admission(AdmissionLimits(max_chat_streams=1))
    admission.admit(CallKind.CHAT, "a")
    with pytest.raises(ResourceExhausted) as caught:
        admission.admit(CallKind.CHAT, "b")
    assert ("grpc-retry-pushback-ms", "1000") in caught.value.trailing_metadata
    assert (admission.total, admission.by_principal) == (1, {"a": 1})
    admission.release(CallKind.CHAT, "a")
    assert (admission.total, +admission.by_kind, dict(admission.by_principal)) == (0, {}, {})
    assert "total=0" in repr(admission)


def test_without_a_principal_only_the_shared_caps_apply() -> None:
    admission = Admission(AdmissionLimits(max_streams_per_principal=1))
    for _ in range(3):
        admission.admit(CallKind.CHAT, None)
    assert admission.by_principal == {}


# -- the settings -----------------------------------------------------------------------------


def test_settings_have_variables_defaults_and_checks() -> None:
    config = load_config(
        [],
        {
            "MESH_MAX_CHAT_STREAMS": "7",
            "MESH_MAX_LIST_STREAMS": "6",
            "MESH_MAX_UNARY_RPCS": "5",
            "MESH_MAX_STREAMS_PER_PRINCIPAL": "4",
            "MESH_CHAT_IDLE_TIMEOUT": "2.5",
            "MESH_HANDSHAKE_TIMEOUT": "1.5",
            "MESH_MAX_CONNECTION_IDLE": "0",
            "MESH_MAX_STREAMS_PER_CONNECTION": "3",
        },
    )
    limits = admission_limits(config)
    assert (limits.max_chat_streams, limits.max_list_streams, limits.max_unary) == (7, 6, 5)
    assert (limits.max_streams_per_principal, limits.chat_idle_timeout) == (4, 2.5)
    options = dict(server_options(config))
    assert options["grpc.server_handshake_timeout_ms"] == 1500
    assert options["grpc.max_concurrent_streams"] == 3
    assert "grpc.max_connection_idle_ms" not in options  # 0 = never
    defaults = admission_limits(ServiceConfig())
    assert (defaults.max_calls, defaults.max_chat_streams) == (1000, 200)
    assert (defaults.max_streams_per_principal, defaults.chat_idle_timeout) == (20, 300.0)
    assert dict(server_options(ServiceConfig()))["grpc.max_connection_idle_ms"] == 600_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_chat_streams", 0),
        ("max_list_streams", 0),
        ("max_unary_rpcs", 0),
        ("max_streams_per_principal", 0),
        ("chat_idle_timeout", -1.0),
        ("handshake_timeout", 0.0),
        ("max_connection_idle", -1.0),
        ("max_streams_per_connection", 0),
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        ServiceConfig(**{field: value})  # type: ignore[arg-type]


# -- real replicas ----------------------------------------------------------------------------


@pytest.fixture
async def capped() -> AsyncIterator[InProcessServer]:
    async with serve("127.0.0.1", max_streams_per_principal=5, max_concurrent_rpcs=50) as server:
        yield server


async def test_a_caller_flooding_idle_chats_cannot_take_health_or_other_callers_down(
    capped: InProcessServer,
) -> None:
    async with grpc.aio.insecure_channel(capped.address) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        created = await stub.CreateUser(
            user_pb2.CreateUserRequest(name="Ann", email="ann@example.com", age=30), metadata=ADMIN
        )
        held = [await _open_chat(stub, _as("flooder")) for _ in range(5)]
        excess = [stub.Chat(None, metadata=_as("flooder")) for _ in range(10)]
        for call in excess:
            _assert_exhausted_with_pushback(await _refusal(call), "at most 5 open Chat")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
        assert loop.time() - started < 1.0
        got = await stub.GetUser(
            user_pb2.GetUserRequest(id=created.user.id), metadata=_as("other"), timeout=2
        )
        assert got.user.email == "ann@example.com"
        assert (await _open_chat(stub, _as("other"))).cancel()
        assert _admission(capped).by_principal["flooder"] == 5
        for call in held:
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
    await _counts_back_to_zero(_admission(capped))


async def test_the_total_cap_refuses_application_calls_never_health_or_reflection() -> None:
    async with serve("127.0.0.1", max_concurrent_rpcs=3) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            held = [await _open_chat(stub, _as(f"caller-{n}")) for n in range(3)]
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.GetUser(user_pb2.GetUserRequest(id="x"), metadata=_as("new"))
            _assert_exhausted_with_pushback(unary.value, "at most 3 calls")
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                async for _ in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_as("new")):
                    pass
            _assert_exhausted_with_pushback(listing.value, "at most 3 calls")
            # Many health checks and watches at once, and reflection: none counts.
            checks = await asyncio.gather(*(_health(ch) for _ in range(20)))
            assert set(checks) == {health_pb2.HealthCheckResponse.SERVING}
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            assert (await asyncio.wait_for(watch.read(), 2)).status == 1
            reflection = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
            await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            listed = await asyncio.wait_for(reflection.read(), 2)
            names = {s.name for s in listed.list_services_response.service}
            assert "meshdemo.v1.UserService" in names
            await reflection.done_writing()
            watch.cancel()
            for call in held:
                call.cancel()
        await _counts_back_to_zero(_admission(server))


async def test_the_chat_cap_leaves_unary_calls_room() -> None:
    async with serve("127.0.0.1", max_chat_streams=2) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            held = [await _open_chat(stub, _as(f"c{n}")) for n in range(2)]
            err = await _refusal(stub.Chat(None, metadata=_as("c3")))
            _assert_exhausted_with_pushback(err, "at most 2 Chat streams")
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetUser(user_pb2.GetUserRequest(id="nobody"), metadata=_as("c3"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # admitted, then answered
            for call in held:
                call.cancel()
        await _counts_back_to_zero(_admission(server))


async def test_the_unary_cap_holds_while_calls_are_in_flight() -> None:
    # The chaos delay runs inside admission, so each GetUser holds its slot 0.5 s.
    async with serve("127.0.0.1", max_unary_rpcs=1, fault_delay=0.5) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            results = await asyncio.gather(
                *(
                    stub.GetUser(user_pb2.GetUserRequest(id="x"), metadata=_as(f"u{n}"), timeout=5)
                    for n in range(3)
                ),
                return_exceptions=True,
            )
            codes = sorted(r.code().name for r in results if isinstance(r, grpc.aio.AioRpcError))
            assert codes == ["NOT_FOUND", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
        await _counts_back_to_zero(_admission(server))


async def test_unauthenticated_calls_never_reach_admission(capped: InProcessServer) -> None:
    async with grpc.aio.insecure_channel(capped.address) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        held = [await _open_chat(stub, _as("full")) for _ in range(5)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetUser(user_pb2.GetUserRequest(id="x"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _admission(capped).total == 5
        for call in held:
            call.cancel()
    await _counts_back_to_zero(_admission(capped))


async def test_an_idle_chat_ends_with_deadline_exceeded_and_frees_its_slot() -> None:
    async with serve("127.0.0.1", chat_idle_timeout=0.5, max_chat_streams=1) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            loop = asyncio.get_running_loop()
            idle = await _open_chat(stub, _as("idler"))
            started = loop.time()
            code = await asyncio.wait_for(idle.code(), 5)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "idle timeout" in (await idle.details() or "")
            assert 0.4 < loop.time() - started < 3.0
            # The one Chat slot is free again: a new Chat is admitted and served.
            again = await _open_chat(stub, _as("idler"))
            for n in range(3):  # messages within the bound keep it open
                await asyncio.sleep(0.2)
                await again.write(_chat_request(f"m{n}"))
                assert (await asyncio.wait_for(read(again), 2)).message.text == f"m{n}"
            await again.done_writing()
            assert await again.code() == grpc.StatusCode.OK
        await _counts_back_to_zero(_admission(server))


async def test_slots_are_released_however_calls_end(capped: InProcessServer) -> None:
    admission = _admission(capped)
    async with grpc.aio.insecure_channel(capped.address) as ch:
        stub = user_pb2_grpc.UserServiceStub(ch)
        for round_ in range(8):  # 8 x 4 streams by one caller, far more than its cap of 5
            calls = [await _open_chat(stub, _as("churn")) for _ in range(3)]
            closed, cancelled, failed = calls
            timed_out = stub.Chat(None, metadata=_as("churn"), timeout=0.3)  # the client's deadline
            await timed_out.write(_chat_request())
            await timed_out.read()
            await closed.done_writing()
            assert await closed.code() == grpc.StatusCode.OK
            cancelled.cancel()
            await failed.write(_chat_request(""))  # empty text: INVALID_ARGUMENT mid-stream
            assert await failed.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await timed_out.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetUser(user_pb2.GetUserRequest(id=f"x{round_}"), metadata=_as("u"))
            async for _ in stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_as("churn")):
                pass
            await _counts_back_to_zero(admission)


# -- connections ------------------------------------------------------------------------------


async def test_a_socket_that_never_handshakes_is_closed_within_the_bound() -> None:
    async with serve("127.0.0.1", handshake_timeout=0.5) as server:
        host, port = server.address.rsplit(":", 1)
        loop = asyncio.get_running_loop()

        def wait_for_close() -> float:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                started = loop.time()
                sock.settimeout(5)
                try:
                    while sock.recv(4096):  # the server's own SETTINGS may come first
                        pass
                except ConnectionResetError:
                    pass
                return loop.time() - started

        elapsed = await asyncio.to_thread(wait_for_close)
        assert elapsed < 3.0
        async with grpc.aio.insecure_channel(server.address) as ch:
            assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_a_connection_without_calls_is_closed_after_the_idle_bound() -> None:
    async with serve("127.0.0.1", max_connection_idle=0.5) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
            assert ch.get_state() == grpc.ChannelConnectivity.READY
            for _ in range(100):
                if ch.get_state() != grpc.ChannelConnectivity.READY:
                    break
                await asyncio.sleep(0.05)
            assert ch.get_state() == grpc.ChannelConnectivity.IDLE
            # The client reconnects by itself on the next call.
            assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_streams_beyond_the_per_connection_cap_wait_for_a_free_one() -> None:
    async with serve("127.0.0.1", max_streams_per_connection=2) as server:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = user_pb2_grpc.UserServiceStub(ch)
            first, second = [await _open_chat(stub, _as("one")) for _ in range(2)]
            third = stub.Chat(None, metadata=_as("one"))
            # The client holds the third stream back until the server allows it.
            writing = asyncio.ensure_future(third.write(_chat_request("third")))
            done, _ = await asyncio.wait({writing}, timeout=0.5)
            assert not done
            assert _admission(server).total == 2  # the third never reached the server
            await first.done_writing()
            await first.code()
            await asyncio.wait_for(writing, 5)
            reply = await asyncio.wait_for(read(third), 5)
            assert reply.message.text == "third"
            for call in (second, third):
                call.cancel()
        await _counts_back_to_zero(_admission(server))
