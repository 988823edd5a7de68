"""Building, running and stopping one replica.

Shutdown protocol (matches the chart's preStop and terminationGracePeriod):
1. health turns NOT_SERVING (clients watching health stop picking us);
2. wait ``drain_delay`` so endpoint removal propagates (a second signal skips it);
3. open health Watch streams end with OK (they would hold the grace otherwise);
   ``server.stop(shutdown_grace)``: no new RPCs, in-flight ones get the grace;
4. stop the health-only port, metrics and health probes, close the store,
   flush spans; exit 0.

TLS (``service.tls``): with ``--tls-cert-file`` the gRPC port serves TLS
from files re-read when they change; with ``--tls-client-ca-file`` every
client must present a certificate from that CA. ``--health-port`` adds a
plain-text port that serves only ``grpc.health.v1`` (kubelet's gRPC probe
cannot speak TLS), sharing the one health servicer.

Start-up pushes an undo step onto a :class:`Teardown` for everything it
starts; a failed start and a shutdown both run those steps in reverse order,
every one of them even when another fails (the failure is logged). A failed
start raises :class:`~service.config.StartupError` (or its
:class:`~service.config.ConfigError`), which ``python -m service`` prints as
one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider

from meshdemo.v1 import user_pb2, user_pb2_grpc
from service.auth import MIN_SECRET_BYTES, TokenVerifier
from service.config import ConfigError, ServiceConfig, StartupError
from service.health import HealthReporter
from service.interceptors import (
    Admission,
    AdmissionInterceptor,
    AdmissionLimits,
    DefaultDeadlineInterceptor,
    build_server_interceptors,
)
from service.interceptors._fault import FaultDelayInterceptor
from service.metrics import ServerMetrics, start_metrics_http_server
from service.servicer import UserServicer
from service.store import Store, StoreUnavailable, open_store
from service.store._traced import TracedStore, db_system
from service.tls import CertificateFiles, server_credentials
from service.tracing import has_span_processors

__all__ = [
    "Replica",
    "Teardown",
    "admission_limits",
    "server_options",
    "start_replica",
    "store_location",
]

log = logging.getLogger("meshdemo.server")


def server_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """Channel arguments of the server: keepalive, connection age and connection bounds."""
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
        # A socket that never completes the handshake and HTTP/2 preface is
        # closed after this bound, so idle sockets cannot pile up.
        ("grpc.server_handshake_timeout_ms", int(config.handshake_timeout * 1000)),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
    ]
    if config.max_connections > 0:
        # grpc core's connection quota: a connection beyond the cap is closed
        # at accept, before any handshake, so sockets cannot exhaust the
        # file descriptors; the handshake and idle bounds free the slots.
        options.append(("grpc.max_allowed_incoming_connections", config.max_connections))
    if config.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", int(config.max_connection_idle * 1000)))
    if config.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000)),
        ]
    return options


def admission_limits(config: ServiceConfig) -> AdmissionLimits:
    """The admission caps the settings ask for."""
    return AdmissionLimits(
        max_calls=config.max_concurrent_rpcs,
        max_chat_streams=config.max_chat_streams,
        max_list_streams=config.max_list_streams,
        max_unary=config.max_unary_rpcs,
        max_streams_per_principal=config.max_streams_per_principal,
        chat_idle_timeout=config.chat_idle_timeout,
    )


async def _run_step(name: str, step: Callable[[], object]) -> bool:
    """Run one teardown step (sync or async); log a failure and report it."""
    try:
        result = step()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        log.error(
            "teardown step failed", extra={"step": name, "error": f"{type(exc).__name__}: {exc}"}
        )
        return False
    return True


class Teardown:
    """Undo steps for what start-up started, run last in, first out.

    Invariant: :meth:`run` runs every pushed step exactly once, in reverse
    order, whatever the earlier ones did; failures are logged, not raised.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def __repr__(self) -> str:
        return f"Teardown({[name for name, _ in self._steps]!r})"

    def push(self, name: str, step: Callable[[], object]) -> None:
        """Register ``step`` (a function, or one returning an awaitable) to undo ``name``."""
        self._steps.append((name, step))

    async def run(self) -> bool:
        """Run and forget every step, newest first; whether all of them succeeded."""
        ok = True
        while self._steps:
            name, step = self._steps.pop()
            ok = await _run_step(name, step) and ok
        return ok


@dataclass
class Replica:
    """A started replica: server, health, store and metrics endpoint."""

    config: ServiceConfig
    server: grpc.aio.Server
    health: HealthReporter
    store: Store
    address: str
    metrics_port: int | None = None
    #: The live counts of admitted UserService calls.
    admission: Admission | None = None
    #: The plain-text port serving only grpc.health.v1; None when off.
    health_port: int | None = None
    #: The certificate files served (None: plain text).
    tls: CertificateFiles | None = None
    _teardown: Teardown = field(default_factory=Teardown)
    _stopped: bool = False

    async def shutdown(
        self, *, drain_delay: float | None = None, skip_drain: asyncio.Event | None = None
    ) -> None:
        """Run the shutdown protocol (idempotent); every step runs even if one fails."""
        if self._stopped:
            return
        self._stopped = True
        delay = self.config.drain_delay if drain_delay is None else drain_delay
        await _run_step("health NOT_SERVING", self.health.enter_graceful_shutdown)
        if delay > 0:
            log.info("draining", extra={"drain_delay_s": delay})
            waiter = skip_drain or asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # Keeps a cancel (wait_for in 3.11 may not).
                    await waiter.wait()
        log.info("stopping", extra={"grace_s": self.config.shutdown_grace})
        self.health.end_watches()
        await _run_step("gRPC server", lambda: self.server.stop(self.config.shutdown_grace))
        # The rest of start-up in reverse: metrics, health probes, store.
        await self._teardown.run()
        log.info("stopped")


def _verifier(config: ServiceConfig) -> TokenVerifier | None:
    secret = config.jwt_secret()
    if config.auth_disabled:
        log.warning("authentication is switched off: every caller is trusted")
        return None
    if not secret:
        raise ConfigError(
            "no JWT secret",
            f"set MESH_AUTH_SECRET (at least {MIN_SECRET_BYTES} bytes, e.g. "
            "$(openssl rand -hex 32)) or MESH_AUTH_SECRET_FILE, "
            "or switch auth off explicitly with --no-auth / MESH_AUTH_DISABLED=true",
        )
    try:
        return TokenVerifier(secret)
    except ValueError:
        source = "MESH_AUTH_SECRET" if config.auth_secret else "MESH_AUTH_SECRET_FILE"
        raise ConfigError(
            f"the JWT secret from {source} is {len(secret.encode())} bytes, "
            f"HS256 needs at least {MIN_SECRET_BYTES}",
            "set a longer secret, e.g. $(openssl rand -hex 32)",
        ) from None


def store_location(url: str) -> str:
    """Where a store URL points, for messages: a file path or ``host:port/db``, no password."""
    if url.startswith("sqlite:"):
        return str(Path(urlsplit(url).path[1:]).absolute())
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    return f"{_bracket(parts.hostname or 'localhost')}:{port}{parts.path}"


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path) -> None:
    """Refuse a SQLite path that no retry can make work: fix the setting or the disk."""
    fix = "point --store / MESH_STORE at a file in an existing, writable directory"
    if path.is_dir():
        raise StartupError(f"cannot open the SQLite store {path}: it is a directory", fix)
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise StartupError(
            f"cannot open the SQLite store {path}: directory {path.parent} {problem}",
            "create it, or point --store / MESH_STORE at a file in an existing directory",
        )
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return  # created on open
    except OSError as exc:
        raise StartupError(
            f"cannot open the SQLite store {path}: {exc.strerror or exc}",
            "give this user read and write access to the file and its directory",
        ) from None
    if head and head != _SQLITE_MAGIC[: len(head)]:
        raise StartupError(f"cannot open the SQLite store {path}: not a SQLite database", fix)


def _build_store(config: ServiceConfig) -> Store:
    try:
        store = open_store(config.store)
    except ValueError as exc:
        # The stores' messages redact passwords already.
        raise ConfigError(f"--store / MESH_STORE: {exc}") from None
    if config.store.startswith("sqlite:"):
        _check_sqlite_file(Path(store_location(config.store)))
    return store


async def _open_store(config: ServiceConfig, teardown: Teardown) -> Store:
    """Open the store; if it is down, start anyway and let health say NOT_SERVING.

    A store whose ``open()`` failed retries it on every later call (ping
    included), so the health probe brings the replica to SERVING as soon as
    the database answers, as a Kubernetes readiness probe expects. What no
    retry can fix (a bad URL, a SQLite path in no directory) fails start-up.
    """
    store = _build_store(config)
    teardown.push("store", store.close)
    try:
        await store.open()
    except StoreUnavailable as exc:
        log.warning(
            "store not reachable at start; NOT_SERVING until it is",
            extra={"store": store_location(config.store), "error": str(exc)},
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

    Raises:
        ConfigError: A setting is wrong (secret, store URL).
        StartupError: The environment is: the port is taken or the address
            is not on this machine, the metrics port is taken, the SQLite
            path cannot hold a database. Whatever had started is undone.
    """
    verifier = _verifier(config)
    teardown = Teardown()
    try:
        return await _start(config, teardown, verifier, tracer_provider, interceptors)
    except BaseException:
        await teardown.run()
        raise


def _chain(
    config: ServiceConfig,
    verifier: TokenVerifier | None,
    metrics: ServerMetrics | None,
    tracer_provider: TracerProvider | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None,  # type: ignore[type-arg]
    admission: AdmissionInterceptor,
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    if interceptors is None:
        chain = build_server_interceptors(
            verifier=verifier,
            metrics=metrics,
            tracer_provider=tracer_provider,
            admission=admission,
        )
    else:
        chain = [*interceptors, admission]
    if config.fault_delay > 0:
        log.warning(
            "chaos: every UserService call is delayed", extra={"delay_s": config.fault_delay}
        )
        chain.append(FaultDelayInterceptor(config.fault_delay))
    # First: it reads unary requests itself, so calls without a deadline are bounded.
    deadline = DefaultDeadlineInterceptor(
        config.default_call_timeout, config.default_stream_timeout
    )
    return [deadline, *chain]


def _add_services(
    server: grpc.aio.Server, store: Store, health: HealthReporter, config: ServiceConfig
) -> None:
    user_pb2_grpc.add_UserServiceServicer_to_server(
        UserServicer(store, replica=config.replica), server
    )
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if config.reflection:
        names = (
            user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)


async def _start(
    config: ServiceConfig,
    teardown: Teardown,
    verifier: TokenVerifier | None,
    tracer_provider: TracerProvider | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None,  # type: ignore[type-arg]
) -> Replica:
    # Every started part pushes its undo at once, so a failure below undoes it.
    # The TLS files are checked first: nothing is opened for a bad one.
    tls = server_credentials(config)
    store = _traced(await _open_store(config, teardown), config, tracer_provider)
    metrics = ServerMetrics() if config.metrics_port >= 0 else None
    admission = AdmissionInterceptor(admission_limits(config))
    # No maximum_concurrent_rpcs: grpcio's cap counts health checks too, so
    # a flood of application streams would fail them; admission caps only
    # UserService calls.
    server = grpc.aio.server(
        interceptors=_chain(config, verifier, metrics, tracer_provider, interceptors, admission),
        options=server_options(config),
    )
    # After a graceful stop in Replica.shutdown this is a no-op; on a failed
    # start it stops the server at once.
    teardown.push("gRPC server", lambda: server.stop(None))
    health = HealthReporter(store, interval=config.health_interval)
    _add_services(server, store, health, config)
    port = _bind(server, config.host, config.port, tls[0] if tls else None)
    replica = Replica(
        config,
        server,
        health,
        store,
        f"{_bracket(config.host)}:{port}",
        admission=admission.admission,
        tls=tls[1] if tls else None,
        _teardown=teardown,
    )
    if metrics is not None:
        replica.metrics_port = _start_metrics(metrics, config, teardown)
    await health.start()
    teardown.push("health probes", health.stop)
    if config.health_port >= 0:
        replica.health_port = await _start_health_port(health, config, teardown)
    await server.start()
    return replica


async def _start_health_port(
    health: HealthReporter, config: ServiceConfig, teardown: Teardown
) -> int:
    """A plain-text server with the health service only, for probes that cannot speak TLS."""
    from grpc_health.v1 import health_pb2_grpc

    # No interceptors: health never counts towards admission, auth or metrics.
    server = grpc.aio.server(options=server_options(config))
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    teardown.push("health port", lambda: server.stop(None))
    port = _bind(
        server,
        config.host,
        config.health_port,
        None,
        fix="choose a free --health-port / MESH_HEALTH_PORT (0 picks one, -1 turns it off)",
    )
    await server.start()
    return port


_PORT_FIX = (
    "choose a free --port / MESH_PORT (0 picks one) and an address of this "
    "machine for --host / MESH_HOST (0.0.0.0 or [::] for all)"
)


def _bind(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    *,
    fix: str = _PORT_FIX,
) -> int:
    address = f"{_bracket(host)}:{port}"
    # Probing first gives the reason (grpc's error says only "Failed to bind")
    # and spares stderr grpc's own multi-line log of the failure.
    problem = _bind_problem(host, port)
    bound = 0
    if problem is None:
        try:
            if credentials is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, credentials)
        except RuntimeError:
            bound = 0
        if bound == 0:
            # Lost a race for the port, or a name that is not ours.
            problem = "the port is in use or the address is not on this machine"
    if problem is not None:
        raise StartupError(f"cannot listen on {address}: {problem}", fix)
    return bound


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, by binding it once (nothing is sent); None if it can.

    Only IP literals are probed: resolving a name here could query DNS.
    Like grpc, the probe sets SO_REUSEADDR, so a port in TIME_WAIT is free.
    """
    literal = host.strip("[]")
    try:
        version = ipaddress.ip_address(literal).version
    except ValueError:
        return None
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((literal, port))
        except OSError as exc:
            return _bind_errno_text(exc, port)
    return None


def _bind_errno_text(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not on this machine"
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges this process lacks"
    return exc.strerror or os.strerror(exc.errno or 0)


def _start_metrics(metrics: ServerMetrics, config: ServiceConfig, teardown: Teardown) -> int:
    try:
        port, stop = start_metrics_http_server(metrics, config.host, config.metrics_port)
    except OSError as exc:
        address = f"{_bracket(config.host)}:{config.metrics_port}"
        raise StartupError(
            f"cannot serve metrics on {address}: {_bind_errno_text(exc, config.metrics_port)}",
            "choose a free --metrics-port / MESH_METRICS_PORT (0 picks one, -1 turns metrics off)",
        ) from None
    teardown.push("metrics endpoint", stop)
    return port


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
            "health_port": replica.health_port,
            "tls": "off" if replica.tls is None else ("mutual" if replica.tls.mutual else "on"),
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
