"""The supervisor: replicas, the DNS of the ready ones, traces, the timeline, control.

:class:`Mesh` plays the cluster's parts around unchanged service and client
code: a ReplicaSet (replicas as processes, restarted when they exit), the
endpoints controller and CoreDNS (a replica is in DNS exactly while it is
SERVING and not terminating), Jaeger's collector (an OTLP receiver that
keeps spans in the state directory), and ``kubectl`` (commands from other
terminals over the control socket).

State changes in one place: every replica reports a change through
``_changed``, which recomputes the DNS records and the status and queues
the status file write; no await happens inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client._tls import TlsConfig, TlsCredentials
from mesh._config import MAX_REPLICAS, MeshConfig
from mesh._control import ControlServer
from mesh._process import LogSink, parent_death_supported
from mesh._receiver import TraceReceiver
from mesh._replica import Replica
from mesh._spans import SpanStore
from mesh._state import StateDir
from mesh._timeline import Timeline
from mesh.dns import DnsServer

__all__ = ["Mesh", "MeshError", "MeshEvent"]

_log = logging.getLogger("meshdemo.mesh")


class MeshError(Exception):
    """The mesh cannot start or cannot do what was asked; the message says why."""


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """Something the cluster would show in ``kubectl get events``.

    ``kind`` is one of: kill, graceful, restart, ready, unready, scale.
    ``t`` is seconds since the mesh's time origin (its start, unless moved).
    """

    t: float
    kind: str
    replica: str
    text: str


class Mesh:
    """A running local mesh. ``async with Mesh(config) as mesh:`` starts and stops it.

    Args:
        config: What to run.
        clock: Monotonic seconds (event times).
        rng: Random source for ``kill("random")``.
    """

    def __init__(
        self,
        config: MeshConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.state = StateDir(config.state_dir)
        self.timeline = Timeline(title="mesh up")
        self.port = config.port
        self._clock = clock
        self._rng = rng or random.Random()
        self._started = clock()
        self._origin = self._started
        self._replicas: dict[str, Replica] = {}
        self._next_ordinal = 0
        self._published: tuple[str, ...] | None = None
        self._listeners: list[Callable[[MeshEvent], None]] = []
        self._dns = DnsServer(ttl=config.dns_ttl, port=config.dns_port)
        self._spans = SpanStore(config.state_dir)
        self._receiver = TraceReceiver(self._spans, forward_to=config.forward_to)
        self._control: ControlServer | None = None
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._secret = ""
        self._stopping: set[str] = set()
        self._closed = False
        self._security: TlsCredentials | None = None

    # --- what others read -------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The URI a client dials: this mesh's DNS server in the authority."""
        return f"dns://127.0.0.1:{self._dns.port}/{self.config.name}:{self.port}"

    @property
    def secret(self) -> str:
        """The HS256 secret every replica verifies tokens with."""
        return self._secret

    @property
    def otlp_endpoint(self) -> str:
        """Where replicas and clients export spans: the mesh's receiver."""
        return self._receiver.endpoint

    @property
    def replicas(self) -> list[Replica]:
        """The replicas, by ordinal."""
        return list(self._replicas.values())

    def replica(self, name: str) -> Replica:
        """The replica called ``name``; ValueError when there is none."""
        try:
            return self._replicas[name]
        except KeyError:
            known = ", ".join(self._replicas) or "none"
            raise ValueError(f"no replica {name!r} (replicas: {known})") from None

    def elapsed(self) -> float:
        """Seconds since the mesh started."""
        return self._clock() - self._started

    def now(self) -> float:
        """The time of events and of the timeline: seconds since the time origin."""
        return self._clock() - self._origin

    def set_time_origin(self, seconds_ago: float) -> None:
        """Count event and timeline times from ``seconds_ago`` seconds before now.

        The mesh counts from its own start; the demo counts from the start of
        its load, as the load generator's view does.
        """
        self._origin = self._clock() - seconds_ago

    def subscribe(self, listener: Callable[[MeshEvent], None]) -> None:
        """Call ``listener`` for every event from now on (it must not block)."""
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """The document ``mesh status --json`` prints."""
        return {
            "state": "stopped" if self._closed else "running",
            "target": self.target,
            "dns": f"127.0.0.1:{self._dns.port}",
            "name": self.config.name,
            "ttl": self.config.dns_ttl,
            "port": self.port,
            "records": list(self._published or ()),
            "store": _redact(self.config.store_url),
            "otlp": self.otlp_endpoint,
            "forward_to": self.config.forward_to,
            "supervisor_pid": os.getpid(),
            "state_dir": str(self.state.root),
            "tls": self.config.tls,
            "tls_client_env": self.tls_client_env(),
            "uptime_s": round(self.elapsed(), 1),
            "replicas": [replica.describe() for replica in self._replicas.values()],
        }

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start DNS, the trace receiver and every replica; return once all are SERVING.

        Raises:
            MeshError: Another supervisor runs in the state directory, or the
                replicas did not become SERVING within ``config.start_timeout``.
        """
        self.state.create()
        running = self.state.running_supervisor()
        if running is not None and running.get("pid") != os.getpid():
            raise MeshError(
                f"a mesh is already running in {self.state.root} (pid {running['pid']}); "
                "stop it with `python -m mesh down` or pick another --state-dir"
            )
        self._secret = self.state.secret()
        self._issue_certificates()
        self._started = self._origin = self._clock()
        self._dns.start()
        try:
            await self._receiver.start()
            self._tasks.append(asyncio.create_task(self._write_status(), name="mesh-status"))
            await self._start_replicas(self.config.replicas)
            await self._start_control()
            if self.config.scrape_interval > 0:
                self._tasks.append(asyncio.create_task(self._scrape(), name="mesh-scrape"))
        except BaseException:
            await self.close()
            raise

    def _issue_certificates(self) -> None:
        """With TLS, a fresh development CA and certificates for every replica address."""
        if self.config.tls == "off":
            return
        from client._certs import CertificateSet, write_certificates

        spec = CertificateSet(
            dns_names=[self.config.name, "localhost"],
            ips=["127.0.0.1", *(self.config.host(i) for i in range(MAX_REPLICAS))],
            client_name="mesh-client",
        )
        write_certificates(self.config.tls_dir, spec, force=True, ca_name="meshdemo local mesh CA")
        self._security = TlsCredentials(self._client_tls())

    def _client_tls(self) -> TlsConfig:
        directory = self.config.tls_dir
        mutual = self.config.tls == "mutual"
        return TlsConfig(
            ca_file=str(directory / "ca.crt"),
            cert_file=str(directory / "client.crt") if mutual else "",
            key_file=str(directory / "client.key") if mutual else "",
        )

    def tls_client_env(self) -> dict[str, str]:
        """The client's ``MESH_TLS_*`` variables for this mesh; empty without TLS."""
        if self.config.tls == "off":
            return {}
        tls = self._client_tls()
        env = {"MESH_TLS_CA_FILE": tls.ca_file}
        if tls.cert_file:
            env["MESH_TLS_CLIENT_CERT_FILE"] = tls.cert_file
            env["MESH_TLS_CLIENT_KEY_FILE"] = tls.key_file
        return env

    def _tls_env(self) -> dict[str, str]:
        """The replicas' TLS settings."""
        if self.config.tls == "off":
            return {}
        directory = self.config.tls_dir
        env = {
            "MESH_TLS_CERT_FILE": str(directory / "server.crt"),
            "MESH_TLS_KEY_FILE": str(directory / "server.key"),
        }
        if self.config.tls == "mutual":
            env["MESH_TLS_CLIENT_CA_FILE"] = str(directory / "ca.crt")
        return env

    async def _start_replicas(self, count: int) -> None:
        if count == 0:
            return
        first = self._add_replica()
        if self.port == 0:
            # The first replica picks the port; every other one binds the same.
            await self._wait_bound(first)
            self.port = first.port
        for _ in range(count - 1):
            self._add_replica()
        await self.wait_serving(timeout=self.config.start_timeout)

    async def _wait_bound(self, replica: Replica) -> None:
        try:
            await replica.wait_bound(self.config.start_timeout)
        except TimeoutError:
            log = self.state.log_file(replica.name)
            raise MeshError(
                f"{replica.name} did not start within {self.config.start_timeout:g} s; "
                f"its log is {log}"
            ) from None

    async def wait_serving(self, *, timeout: float, count: int | None = None) -> None:
        """Wait until ``count`` replicas (default: all) are SERVING and in DNS."""
        wanted = len(self._replicas) if count is None else count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(r.ready for r in self._replicas.values()) < wanted:
            if loop.time() > deadline:
                raise MeshError(self._not_serving_report(timeout))
            await asyncio.sleep(0.05)

    def _not_serving_report(self, timeout: float) -> str:
        """Which replicas are not SERVING, with the last line each one logged."""
        lines = [f"replicas not SERVING within {timeout:g} s:"]
        for replica in self._replicas.values():
            if replica.ready:
                continue
            log = self.state.log_file(replica.name)
            lines.append(f"  {replica.name} {replica.state.value} (log {log}): {_last_line(log)}")
        return "\n".join(lines)

    async def _start_control(self) -> None:
        path = self.state.control_socket()
        self._control = ControlServer(
            path,
            {
                "status": self._cmd_status,
                "kill": self._cmd_kill,
                "scale": self._cmd_scale,
                "down": self._cmd_down,
            },
        )
        await self._control.start()
        self.state.write_json(
            self.state.supervisor_file,
            {"pid": os.getpid(), "socket": str(path), "parent_death": parent_death_supported()},
        )

    async def wait_stopped(self) -> None:
        """Return when ``down`` was asked for (or :meth:`request_stop` called)."""
        await self._stop.wait()

    def request_stop(self) -> None:
        """Ask :meth:`wait_stopped` to return (a signal handler's job)."""
        self._stop.set()

    def skip_drain(self) -> None:
        """A second Ctrl-C: replicas skip the rest of their drain delay."""
        for replica in self._replicas.values():
            replica.skip_drain()

    async def close(self) -> None:
        """Drain and stop every replica, then DNS and the receiver; write the last status."""
        if self._closed:
            return
        self._closed = True
        if self._control is not None:
            await self._control.close()
        replicas = list(self._replicas.values())
        await asyncio.gather(
            *(r.stop(timeout=self.config.stop_timeout) for r in replicas), return_exceptions=True
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._dns.stop()
        await self._receiver.stop()
        self._save_timeline()
        self.state.write_json(self.state.status_file, self.status())
        with contextlib.suppress(FileNotFoundError):
            self.state.supervisor_file.unlink()

    def _save_timeline(self) -> None:
        try:
            self.timeline.save(self.state.timeline_json)
            self.timeline.render_png(self.state.timeline_png)
        except Exception:  # the picture is a bonus; never fail the shutdown for it
            _log.exception("could not write the timeline")

    # --- operations -------------------------------------------------------------------------

    def kill(self, name: str, *, graceful: bool = False) -> dict[str, Any]:
        """SIGKILL (or SIGTERM) one replica, ``random`` for one at random among the running."""
        replica = self._choose(name)
        pid = replica.kill(graceful=graceful)
        if pid is None:
            raise ValueError(f"{replica.name} has no running process ({replica.state.value})")
        signal_name = "SIGTERM" if graceful else "SIGKILL"
        self._emit("graceful" if graceful else "kill", replica.name, f"{signal_name} pid {pid}")
        return {"replica": replica.name, "pid": pid, "signal": signal_name}

    def _choose(self, name: str) -> Replica:
        if name != "random":
            return self.replica(name)
        running = [r for r in self._replicas.values() if r.pid is not None]
        if not running:
            raise ValueError("no replica is running")
        return self._rng.choice(running)

    async def scale(self, count: int) -> dict[str, Any]:
        """Run ``count`` replicas: new ones get the next ordinals, the highest go first."""
        if not 0 <= count <= MAX_REPLICAS:
            raise ValueError(f"replicas must be from 0 to {MAX_REPLICAS}")
        active = [r for r in self._replicas.values() if r.name not in self._stopping]
        for _ in range(count - len(active)):
            self._add_replica()
        for replica in active[count:]:
            self._retire(replica)
        self._emit("scale", "", f"{len(active)} -> {count} replicas")
        return {"from": len(active), "to": count}

    def _retire(self, replica: Replica) -> None:
        self._stopping.add(replica.name)

        async def retire() -> None:
            try:
                await replica.stop(timeout=self.config.stop_timeout)
            finally:
                self._stopping.discard(replica.name)
                self._replicas.pop(replica.name, None)
                # The next replica takes the lowest free ordinal above the live ones.
                self._next_ordinal = max(map(self._ordinal, self._replicas), default=-1) + 1
                self._changed()

        self._tasks.append(asyncio.create_task(retire(), name=f"retire-{replica.name}"))

    @staticmethod
    def _ordinal(name: str) -> int:
        return int(name.rpartition("-")[2])

    def _add_replica(self) -> Replica:
        ordinal = self._next_ordinal
        self._next_ordinal += 1
        name = f"users-{ordinal}"
        replica = Replica(
            name,
            self.config.host(ordinal),
            self.port,
            env=self._replica_env(name),
            log=LogSink(self.state.log_file(name)),
            on_change=self._changed,
            security=self._security,
        )
        self._replicas[name] = replica
        replica.start()
        return replica

    def _replica_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        env.update(
            {
                "MESH_STORE": self.config.store_url,
                "MESH_AUTH_SECRET": self._secret,
                "MESH_REPLICA_NAME": name,
                "MESH_METRICS_PORT": "0",
                "MESH_DRAIN_DELAY": str(self.config.drain_delay),
                "MESH_SHUTDOWN_GRACE": str(self.config.shutdown_grace),
                "MESH_HEALTH_INTERVAL": "1.0",
                "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
                "OTEL_SERVICE_NAME": "meshdemo-user-service",
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={name}",
                "OTEL_BSP_SCHEDULE_DELAY": "500",
                "PYTHONUNBUFFERED": "1",
                **self._tls_env(),
            }
        )
        env.update(self.config.extra_env)
        env.update(self.config.replica_env.get(name, {}))
        return env

    # --- the one place state changes are turned into DNS and status --------------------------

    def _changed(self) -> None:
        ready = tuple(
            r.host for r in self._replicas.values() if r.ready and r.name not in self._stopping
        )
        if ready != self._published:
            previous = set(self._published or ())
            self._published = ready
            self._dns.publish(self.config.name, list(ready))
            for replica in self._replicas.values():
                if replica.host in set(ready) - previous:
                    self._emit("ready", replica.name, f"{replica.address} in DNS")
                elif replica.host in previous - set(ready):
                    self._emit("unready", replica.name, f"{replica.address} out of DNS")
        self._dirty.set()

    def _emit(self, kind: str, replica: str, text: str) -> None:
        event = MeshEvent(round(self.now(), 3), kind, replica, text)
        _log.info("%s %s %s", kind, replica, text)
        if kind in ("kill", "graceful", "scale"):
            self.timeline.mark(event.t, kind, f"{replica} {kind}".strip())
        elif kind == "ready" and self._replica_restarted(replica):
            self.timeline.mark(event.t, "restart", f"{replica} back")
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("event listener failed")

    def _replica_restarted(self, name: str) -> bool:
        replica = self._replicas.get(name)
        return replica is not None and replica.restarts > 0

    async def _write_status(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self.state.write_json(self.state.status_file, self.status())
            await asyncio.sleep(0.2)  # at most five writes a second

    async def _scrape(self) -> None:
        from mesh._scrape import MetricsScraper

        scraper = MetricsScraper(clock=self._clock, started=self._started)
        while True:
            await asyncio.sleep(self.config.scrape_interval)
            targets = {
                r.name: f"{r.host}:{r.metrics_port}"
                for r in self._replicas.values()
                if r.metrics_port and r.pid is not None
            }
            self.timeline.add(await scraper.scrape(targets))
            if int(self.elapsed()) % 5 == 0:
                self.timeline.save(self.state.timeline_json)

    # --- control commands -------------------------------------------------------------------

    async def _cmd_status(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _cmd_kill(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        name = arguments.get("replica")
        if not isinstance(name, str) or not name:
            raise ValueError("kill needs a replica name or 'random'")
        return self.kill(name, graceful=bool(arguments.get("graceful")))

    async def _cmd_scale(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        count = arguments.get("replicas")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError("scale needs a whole number of replicas")
        return await self.scale(count)

    async def _cmd_down(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        self.request_stop()
        return {"stopping": True, "pid": os.getpid()}


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return lines[-1][:300] if lines else "(empty log)"


def _redact(url: str) -> str:
    """A store URL without its password, for status output."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
