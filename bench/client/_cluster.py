"""Three real replicas behind one DNS name: the stage every client benchmark runs on.

The replicas are ``python -m service`` subprocesses on 127.0.0.2-4, all on
the same port (one DNS name, one port, as a headless Service publishes pods)
and sharing one SQLite file in a temporary directory. The mesh's DNS server
(``mesh.dns``) on 127.0.0.1 publishes their A records with a 1 s TTL. Users are seeded so that
GetUser reads real rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from client import NewUserSpec, UserClient
from mesh.dns import DnsServer
from service.testing import ReplicaProcess, admin_token

__all__ = ["HOSTS", "NAME", "Cluster"]

#: The replicas' loopback addresses.
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
#: The DNS name publishing them (fully qualified).
NAME = "users.mesh.test."
_GET_USER = "/meshdemo.v1.UserService/GetUser"
#: Seconds the replicas' log pipes get to catch up before their access logs are counted.
_LOG_SETTLE = 0.3


class Cluster:
    """Replicas, DNS and seeded users; use ``async with``. Everything is undone on exit.

    Args:
        seed_users: Users created before any benchmark (GetUser picks among them).
        rng: Random source for the user ids a benchmark asks for.
    """

    def __init__(self, *, seed_users: int = 200, rng: random.Random | None = None) -> None:
        self.seed_users = seed_users
        self.port = 0
        self.user_ids: list[str] = []
        self.dns = DnsServer(zone="mesh.test", ttl=1)
        self._rng = rng or random.Random(1)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._store_url = ""
        self._replicas: dict[str, ReplicaProcess] = {}

    @property
    def target(self) -> str:
        """The one target both clients dial: the DNS server in the authority."""
        return self.dns.target(NAME, self.port)

    def replica(self, host: str) -> ReplicaProcess:
        """The running replica on ``host``."""
        return self._replicas[host]

    def random_user_id(self) -> str:
        """One of the seeded users' ids, at random."""
        return self._rng.choice(self.user_ids)

    async def __aenter__(self) -> Cluster:
        self._tmp = tempfile.TemporaryDirectory(prefix="meshdemo-bench-")
        self._store_url = f"sqlite:///{Path(self._tmp.name) / 'users.db'}"
        self.dns.start()
        try:
            await self._start_all()
            self.publish(HOSTS)
            await self._seed()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start_all(self) -> None:
        # The first replica picks the (ephemeral) port; the others bind the same one.
        first = await self._start(HOSTS[0], port=0)
        self.port = int(first.address.rsplit(":", 1)[1])
        await asyncio.gather(*(self._start(host, port=self.port) for host in HOSTS[1:]))

    async def _start(
        self, host: str, *, port: int, env: Mapping[str, str] | None = None
    ) -> ReplicaProcess:
        # ReplicaProcess passes "--port 0" first; argparse keeps the last value given.
        proc = ReplicaProcess(host, store_url=self._store_url, env=env, args=("--port", str(port)))
        self._replicas[host] = proc
        await proc.start()
        return proc

    async def _seed(self) -> None:
        static = "static:///" + ",".join(f"{h}:{self.port}" for h in HOSTS)
        specs = [
            NewUserSpec(f"Bench {n}", f"bench-{n}@example.com", 20 + n % 60)
            for n in range(self.seed_users)
        ]
        async with UserClient(static, token=admin_token(), tracing=False) as client:
            for start in range(0, len(specs), 500):
                users = await client.batch_create_users(specs[start : start + 500])
                self.user_ids.extend(user.id for user in users)

    def publish(self, hosts: tuple[str, ...] | list[str]) -> None:
        """Publish exactly ``hosts`` under :data:`NAME` (clients see it within the TTL)."""
        self.dns.publish(NAME, list(hosts))

    async def restart(self, host: str, env: Mapping[str, str] | None = None) -> None:
        """Replace the replica on ``host`` (killed if still running) by a fresh one.

        ``env`` adds settings to the new process, e.g. ``MESH_FAULT_DELAY``.
        """
        old = self._replicas.pop(host, None)
        if old is not None:
            await old.close()
        await self._start(host, port=self.port, env=env)

    @contextlib.contextmanager
    def dns_ttl(self, seconds: int) -> Iterator[None]:
        """Answer with ``seconds`` as every record's TTL (and the negative one) for the block.

        A client re-resolves as often as the TTL says, so a benchmark of CPU per
        call runs with a cluster's TTL instead of the 1 s that lets the kill
        scenarios see a removal quickly.
        """
        saved = self.dns.ttl, self.dns.negative_ttl
        self.dns.ttl = self.dns.negative_ttl = seconds
        try:
            yield
        finally:
            self.dns.ttl, self.dns.negative_ttl = saved

    def mark(self) -> dict[str, int]:
        """Where each replica's log stands now; pass it to :meth:`get_user_counts`."""
        return {host: len(proc.logs) for host, proc in self._replicas.items()}

    async def get_user_counts(self, mark: Mapping[str, int]) -> dict[str, int]:
        """GetUser calls each replica served since ``mark`` (from its access log)."""
        await asyncio.sleep(_LOG_SETTLE)
        counts: dict[str, int] = {}
        for host, proc in self._replicas.items():
            lines = proc.logs[mark.get(host, 0) :]
            counts[host] = sum(
                1
                for line in lines
                if line.get("message") == "rpc" and line.get("method") == _GET_USER
            )
        return counts

    def forget_logs(self) -> None:
        """Drop the log lines kept so far (a long run would otherwise hold them all)."""
        for proc in self._replicas.values():
            proc.logs.clear()

    async def close(self) -> None:
        """Stop every replica (never leaving one stopped), the DNS server, remove the files."""
        procs = list(self._replicas.values())
        self._replicas.clear()
        for proc in procs:
            proc.resume()
        await asyncio.gather(*(proc.close() for proc in procs), return_exceptions=True)
        self.dns.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
