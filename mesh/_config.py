"""The mesh's settings: one frozen, validated value, as the service's config is."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_NAME", "MAX_REPLICAS", "TLS_MODES", "MeshConfig", "user_otlp_endpoint"]

#: The name DNS publishes, as the cluster's headless Service would be named.
DEFAULT_NAME = "users.meshdemo.svc.cluster.local"
#: Replicas take 127.0.0.2 onwards; this many fit comfortably in 127.0.0.0/24.
MAX_REPLICAS = 50
#: ``tls``: off (plain text), on (replicas serve TLS) or mutual (clients need certificates too).
TLS_MODES = ("off", "on", "mutual")


def user_otlp_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint the user set (a Jaeger on the laptop), to forward spans to."""
    env = os.environ if environ is None else environ
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """One mesh run.

    Attributes:
        state_dir: Where the mesh keeps its state (see ``mesh._state``).
        replicas: Replicas at start, ``users-0`` to ``users-{n-1}``.
        store: The store URL every replica shares; None for SQLite in the state directory.
        port: The port every replica binds on its own address; 0 lets the first
            one pick a free port that the others then take too.
        first_host: The first replica's loopback address; the next ones count up.
        name: The DNS name of the ready replicas.
        dns_ttl: TTL in seconds of every DNS answer.
        dns_port: UDP port of the DNS server on 127.0.0.1; 0 for a free one.
        drain_delay: ``MESH_DRAIN_DELAY`` of the replicas: seconds between
            NOT_SERVING and stopping, at least one DNS TTL so clients notice.
        shutdown_grace: ``MESH_SHUTDOWN_GRACE`` of the replicas.
        forward_to: An OTLP endpoint to forward spans to (the user's own Jaeger).
        scrape_interval: Seconds between metrics scrapes for the timeline; 0 = none.
        extra_env: Extra environment of every replica (``MESH_*`` settings).
        replica_env: Extra environment per replica name (a test's fault, say); wins.
        start_timeout: Seconds ``up`` waits for every replica to be SERVING.
        tls: One of :data:`TLS_MODES`. With TLS the mesh issues a development
            CA and certificates into ``tls_dir`` at start (``python -m client
            certs``), replicas serve TLS with them and the supervisor watches
            health over TLS (presenting the client certificate when mutual).
    """

    state_dir: Path
    replicas: int = 3
    store: str | None = None
    port: int = 50051
    first_host: str = "127.0.0.2"
    name: str = DEFAULT_NAME
    dns_ttl: int = 1
    dns_port: int = 0
    drain_delay: float = 2.0
    shutdown_grace: float = 5.0
    forward_to: str | None = None
    scrape_interval: float = 1.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    replica_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    start_timeout: float = 30.0
    tls: str = "off"

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ValueError("; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if not 0 <= self.replicas <= MAX_REPLICAS:
            problems.append(f"--replicas must be from 0 to {MAX_REPLICAS}")
        if not 0 <= self.port <= 65535:
            problems.append("--port must be from 0 to 65535")
        if self.store is not None and not self.store.startswith(
            ("sqlite:///", "postgresql://", "postgres://")
        ):
            problems.append("--store must be sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
        try:
            first = ipaddress.IPv4Address(self.first_host)
        except ValueError:
            problems.append(f"first host {self.first_host!r} is not an IPv4 address")
        else:
            if not first.is_loopback:
                problems.append("replicas bind loopback addresses only (127.0.0.0/8)")
        if self.tls not in TLS_MODES:
            problems.append(f"tls must be one of {', '.join(TLS_MODES)}")
        if self.dns_ttl < 0 or self.drain_delay < 0 or self.shutdown_grace < 0:
            problems.append("TTL, drain delay and shutdown grace must not be negative")
        return problems

    def host(self, ordinal: int) -> str:
        """The loopback address of replica ``ordinal``."""
        return str(ipaddress.IPv4Address(self.first_host) + ordinal)

    @property
    def store_url(self) -> str:
        """The store every replica opens."""
        return self.store or f"sqlite:///{self.state_dir / 'users.db'}"

    @property
    def tls_dir(self) -> Path:
        """Where the mesh's certificates are (when ``tls`` is not off)."""
        return self.state_dir / "tls"

    @property
    def stop_timeout(self) -> float:
        """How long a replica may take to stop after SIGTERM before it is killed."""
        return self.drain_delay + self.shutdown_grace + 3.0
