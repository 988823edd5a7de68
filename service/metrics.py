"""Prometheus metrics of the gRPC server, in go-grpc-prometheus naming.

Each :class:`ServerMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`,
so several servers can live in one process (tests, the local mesh) without
clashing in the global registry. :func:`start_metrics_http_server` serves it
on ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["HANDLING_BUCKETS_S", "ServerMetrics", "start_metrics_http_server"]

#: Histogram buckets in seconds: sub-millisecond cache hits up to minute-long streams.
HANDLING_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_CALL_LABELS = ("grpc_service", "grpc_method", "grpc_type")


class ServerMetrics:
    """The server-side RPC metrics, registered in a private registry.

    Attributes:
        registry: The registry holding every metric below.
        started: ``grpc_server_started_total{grpc_service,grpc_method,grpc_type}``.
        handled: ``grpc_server_handled_total{grpc_service,grpc_method,grpc_type,grpc_code}``.
        handling_seconds: ``grpc_server_handling_seconds{grpc_service,grpc_method,grpc_type}``,
            measured from the call's start to the end of its response stream.
        in_flight: ``grpc_server_in_flight{grpc_service,grpc_method}``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            _CALL_LABELS,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by final status code.",
            (*_CALL_LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (whole stream for streams).",
            _CALL_LABELS,
            buckets=HANDLING_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight",
            "RPCs being served now.",
            ("grpc_service", "grpc_method"),
            registry=self.registry,
        )

    def __repr__(self) -> str:
        return f"ServerMetrics(registry={self.registry!r})"


def start_metrics_http_server(
    metrics: ServerMetrics, host: str, port: int
) -> tuple[int, Callable[[], None]]:
    """Serve ``metrics`` over HTTP on ``host:port`` from a daemon thread.

    Args:
        metrics: The metrics whose registry is exposed.
        host: The address to bind.
        port: The port; 0 binds an ephemeral one.

    Returns:
        The bound port and a callable that stops the server and joins its
        thread; calling it more than once is harmless.
    """
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)

    return int(server.server_port), stop
