"""Floods from one client against one replica, and the probe that shows nobody else notices.

:class:`Probe` times a health Check and another caller's GetUser; a flood's
harm is the ratio of its medians during the flood to a baseline measured
just before, on the same replica (never a wall-clock threshold). The flood
scenarios here feed the reliability table; ``tests/service/test_floods.py``
uses the same probe.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.reliability._scenarios import Outcome
from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.testing import admin_token, reader_token, serve

__all__ = [
    "FLOOR_S",
    "RATIO",
    "SAMPLES",
    "Probe",
    "closed_within",
    "idle_stream_flood",
    "socket_flood",
]

#: How much slower than its own baseline a probe may get during a flood.
RATIO = 25.0
#: Latencies below this count as this (a 0.2 ms baseline would make any jitter a failure).
FLOOR_S = 0.005
SAMPLES = 15


def _caller(sub: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {reader_token(sub)}"),)


class Probe:
    """A health Check and another caller's GetUser, timed (the victims of a flood)."""

    def __init__(self, channel: grpc.aio.Channel, user_id: str) -> None:
        self._health = health_pb2_grpc.HealthStub(channel)
        self._users = user_pb2_grpc.UserServiceStub(channel)
        self._user_id = user_id

    async def _timed(self, call: Callable[[], Awaitable[object]]) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await call()
        return max(loop.time() - started, FLOOR_S)

    async def check(self) -> None:
        reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def get(self) -> None:
        request = user_pb2.GetUserRequest(id=self._user_id)
        reply = await self._users.GetUser(request, metadata=_caller("bystander"), timeout=5)
        assert reply.user.id == self._user_id

    async def median(self) -> tuple[float, float]:
        """Median seconds of a health Check and of a GetUser, over a few sequential calls."""
        checks = [await self._timed(self.check) for _ in range(SAMPLES)]
        gets = [await self._timed(self.get) for _ in range(SAMPLES)]
        return statistics.median(checks), statistics.median(gets)

    async def assert_unharmed(self, baseline: tuple[float, float]) -> tuple[float, float]:
        """Fail unless both medians stay within RATIO of ``baseline``; the two ratios."""
        during = await self.median()
        for what, base, now in zip(("health Check", "GetUser"), baseline, during, strict=True):
            assert now <= RATIO * base, f"{what}: {now * 1000:.1f} ms vs {base * 1000:.1f} ms"
        return during[0] / baseline[0], during[1] / baseline[1]


async def _probe(channel: grpc.aio.Channel) -> tuple[Probe, tuple[float, float]]:
    stub = user_pb2_grpc.UserServiceStub(channel)
    admin = (("authorization", f"Bearer {admin_token()}"),)
    request = user_pb2.CreateUserRequest(name="Ann", email="ann@example.com", age=30)
    created = await stub.CreateUser(request, metadata=admin, timeout=5)
    probe = Probe(channel, created.user.id)
    return probe, await probe.median()


def _note(outcome: Outcome, ratios: list[tuple[float, float]]) -> None:
    worst = max(max(pair) for pair in ratios)
    outcome.notes.append(f"health/GetUser median at most x{worst:.1f} of baseline")


async def _code(call: grpc.aio.Call) -> str:
    try:
        await asyncio.wait_for(call.read(), 5)  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return "OK"


async def idle_stream_flood(state_dir: Path, *, rounds: int = 3) -> Outcome:
    """One caller holds its cap of idle Chats and opens 80 more streams, each round."""
    del state_dir  # one in-process replica with its own temporary store
    outcome = Outcome(
        "one caller floods idle streams",
        "10 idle Chats held (the caller's cap) + 40 Chats + 40 ListUsers, per round",
    )
    ratios = []
    async with (
        serve("127.0.0.1", max_streams_per_principal=10, chat_idle_timeout=2.0) as server,
        grpc.aio.insecure_channel(server.address) as ch,
    ):
        probe, baseline = await _probe(ch)
        stub = user_pb2_grpc.UserServiceStub(ch)
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            held = [stub.Chat(metadata=_caller("flooder")) for _ in range(10)]  # type: ignore[call-arg]
            for call in held:
                await call.write(user_pb2.ChatRequest(message=user_pb2.ChatMessage(text="hold")))
                await asyncio.wait_for(call.read(), 5)
            silent_since = loop.time()
            more: list[Any] = [
                stub.Chat(metadata=_caller("flooder"))  # type: ignore[call-arg]
                for _ in range(40)
            ]
            more += [stub.ListUsers(user_pb2.ListUsersRequest(), metadata=_caller("flooder"))
                     for _ in range(40)]  # fmt: skip
            outcome.failures.update([await _code(call) for call in more])
            ratios.append(await probe.assert_unharmed(baseline))
            ended = [(await asyncio.wait_for(call.code(), 10)).name for call in held]
            outcome.failures.update(ended)
            outcome.recovery_s.append(loop.time() - silent_since)
            outcome.calls += len(held) + len(more) + 4 * SAMPLES
            outcome.rounds += 1
    _note(outcome, ratios)
    outcome.notes.append(
        "the failed calls are the flooder's own, as designed; no bystander call failed"
    )
    return outcome


def _sockets(host: str, port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection((host, port), timeout=5) for _ in range(count)]


def closed_within(sock: socket.socket, bound: float) -> bool:
    """Whether the server closes ``sock`` within ``bound`` s (whatever it sends first is read)."""
    sock.settimeout(bound)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


async def socket_flood(state_dir: Path, *, rounds: int = 3) -> Outcome:
    """Raw sockets that never send the HTTP/2 preface fill the connection cap, each round."""
    del state_dir
    outcome = Outcome(
        "idle sockets fill the connection cap",
        "49 silent sockets (cap 50, handshake bound 1 s) + 10 beyond the cap, per round",
    )
    ratios = []
    async with (
        serve("127.0.0.1", handshake_timeout=1.0, max_connections=50) as server,
        grpc.aio.insecure_channel(server.address) as ch,
    ):
        probe, baseline = await _probe(ch)
        host, _, port = server.address.rpartition(":")
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            squatters = await asyncio.to_thread(_sockets, host, int(port), 49)
            opened = loop.time()
            extra = await asyncio.to_thread(_sockets, host, int(port), 10)
            try:
                shut = await asyncio.gather(
                    *(asyncio.to_thread(closed_within, s, 2.0) for s in extra)
                )
                outcome.notes.append(f"{sum(shut)} of 10 beyond the cap closed at accept")
                ratios.append(await probe.assert_unharmed(baseline))
                await asyncio.gather(*(asyncio.to_thread(closed_within, s, 8.0) for s in squatters))
                outcome.recovery_s.append(loop.time() - opened)
            finally:
                for sock in [*squatters, *extra]:
                    sock.close()
            outcome.calls += 4 * SAMPLES
            outcome.rounds += 1
    _note(outcome, ratios)
    return outcome
