"""Building, running and stopping one replica.

Shutdown protocol (matches the chart's preStop and terminationGracePeriod):
1. health turns NOT_SERVING (clients watching health stop picking us);
2. wait ``drain_delay`` so endpoint removal propagates (a second signal skips it);
3. open health Watch streams end with OK (they would hold the grace otherwise);
   ``server.stop(shutdown_grace)``: no new RPCs, in-flight ones get the grace;
4. close the store, stop metrics, flush spans; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.auth import TokenVerifier
from service.config import ConfigError, ServiceConfig
from service.health import HealthReporter
from service.interceptors import build_server_interceptors
from service.interceptors._fault import FaultDelayInterceptor
from service.metrics import ServerMetrics, start_metrics_http_server
from service.servicer import UserServicer
from service.store import Store, StoreUnavailable, open_store
from service.store._traced import TracedStore, db_system
from service.tracing import has_span_processors

__all__ = ["Replica", "server_options", "start_replica"]

log = logging.getLogger("meshdemo.server")


def server_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """Channel arguments of the server: keepalive policy and connection age."""
    min_ping_ms = int(config.keepalive_min_ping_interval * 1000)
    options = [
        # Accept client pings every min_ping_ms, even on idle connections;
        # faster pings count as strikes and end in GOAWAY too_many_pings.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        # The server's own pings find dead clients.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Two replicas must never share a port silently.
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000)),
        ]
    return options


@dataclass
class Replica:
    """A started replica: server, health, store and metrics endpoint."""

    config: ServiceConfig
    server: grpc.aio.Server
    health: HealthReporter
    store: Store
    address: str
    metrics_port: int | None = None
    _cleanups: list[Callable[[], object]] = field(default_factory=list)
    _stopped: bool = False

    async def shutdown(
        self, *, drain_delay: float | None = None, skip_drain: asyncio.Event | None = None
    ) -> None:
        """Run the shutdown protocol (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        delay = self.config.drain_delay if drain_delay is None else drain_delay
        await self.health.enter_graceful_shutdown()
        if delay > 0:
            log.info("draining", extra={"drain_delay_s": delay})
            waiter = skip_drain or asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), delay)
        log.info("stopping", extra={"grace_s": self.config.shutdown_grace})
        self.health.end_watches()
        await self.server.stop(self.config.shutdown_grace)
        await self.store.close()
        for cleanup in reversed(self._cleanups):
            cleanup()
        log.info("stopped")


def _verifier(config: ServiceConfig) -> TokenVerifier | None:
    secret = config.jwt_secret()
    if config.auth_disabled:
        log.warning("authentication is switched off: every caller is trusted")
        return None
    if not secret:
        raise ConfigError(
            "no JWT secret: set MESH_AUTH_SECRET or MESH_AUTH_SECRET_FILE, "
            "or switch auth off explicitly with --no-auth / MESH_AUTH_DISABLED=true"
        )
    try:
        return TokenVerifier(secret)
    except ValueError as exc:
        raise ConfigError(f"MESH_AUTH_SECRET: {exc}") from exc


async def _open_store(config: ServiceConfig) -> Store:
    """Open the store; if it is down, start anyway and let health say NOT_SERVING.

    A store whose ``open()`` failed retries it on every later call (ping
    included), so the health probe brings the replica to SERVING as soon as
    the database answers, as a Kubernetes readiness probe expects.
    """
    store = open_store(config.store)
    try:
        await store.open()
    except StoreUnavailable as exc:
        log.warning(
            "store not reachable at start; NOT_SERVING until it is", extra={"error": str(exc)}
        )
    return store


def _traced(store: Store, config: ServiceConfig, provider: TracerProvider | None) -> Store:
    """The store with a span per data call when spans go somewhere; else as it is (no cost)."""
    if provider is None or not has_span_processors(provider):
        return store
    return TracedStore(store, provider, system=db_system(config.store), replica=config.replica)


async def start_replica(
    config: ServiceConfig,
    *,
    tracer_provider: TracerProvider | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,  # type: ignore[type-arg]
) -> Replica:
    """Open the store, build the server with every interceptor, bind and start it.

    With a ``tracer_provider`` whose spans go somewhere, store calls are child
    spans of the RPC (see :mod:`service.store._traced`).
    """
    verifier = _verifier(config)
    store = _traced(await _open_store(config), config, tracer_provider)
    metrics = ServerMetrics() if config.metrics_port >= 0 else None
    chain = (
        build_server_interceptors(
            verifier=verifier, metrics=metrics, tracer_provider=tracer_provider
        )
        if interceptors is None
        else list(interceptors)
    )
    if config.fault_delay > 0:
        log.warning(
            "chaos: every UserService call is delayed", extra={"delay_s": config.fault_delay}
        )
        chain.append(FaultDelayInterceptor(config.fault_delay))
    server = grpc.aio.server(
        interceptors=chain,
        options=server_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    user_pb2_grpc.add_UserServiceServicer_to_server(
        UserServicer(store, replica=config.replica), server
    )
    health = HealthReporter(store, interval=config.health_interval)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if config.reflection:
        names = (
            user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{_bracket(config.host)}:{config.port}")
    if port == 0:
        await store.close()
        raise OSError(f"cannot bind {config.host}:{config.port}")
    replica = Replica(config, server, health, store, f"{_bracket(config.host)}:{port}")
    try:
        if metrics is not None:
            replica.metrics_port, stop_metrics = start_metrics_http_server(
                metrics, config.host, config.metrics_port
            )
            replica._cleanups.append(stop_metrics)
        await health.start()
        await server.start()
    except BaseException:
        await server.stop(None)
        await store.close()
        for cleanup in replica._cleanups:
            cleanup()
        raise
    return replica


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def run(config: ServiceConfig, *, tracer_provider: TracerProvider | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; returns the exit code."""
    replica = await start_replica(config, tracer_provider=tracer_provider)
    log.info(
        "serving",
        extra={
            "address": replica.address,
            "metrics_port": replica.metrics_port,
            "replica": config.replica,
            "store": config.store.split("://", 1)[0],
        },
    )
    stop = asyncio.Event()
    skip_drain = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: skipping the drain delay")
            skip_drain.set()
        else:
            log.info(
                "signal received, shutting down", extra={"signal": signal.Signals(signum).name}
            )
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        await replica.shutdown(skip_drain=skip_drain)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
