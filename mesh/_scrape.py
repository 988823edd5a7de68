"""Timeline samples from the replicas' own Prometheus metrics (for ``mesh up`` runs).

When no load generator of ours runs, the servers are the only witnesses: each
replica serves ``/metrics`` (``service/metrics.py``, go-grpc-prometheus names)
on its own loopback port. A :class:`MetricsScraper` reads every replica and
turns the difference between two scrapes into one :class:`~mesh._timeline.Sample`:

- **calls/s per replica**: ``grpc_server_handled_total`` of the user service
  (health and reflection excluded), all codes, per second of the interval;
- **failures**: the same counter's calls with a code other than OK, leaving
  out CANCELLED (the caller gave up: a hedge's losing copy, a Ctrl-C), which
  is not the server failing;
- **p99**: from the interval's ``grpc_server_handling_seconds`` bucket deltas,
  summed over replicas and methods, interpolated linearly within the bucket
  the rank falls in, as Prometheus' ``histogram_quantile`` does (a rank in
  the ``+Inf`` bucket gives the highest finite bound). Bidirectional streams
  (Chat sessions) are left out: their length is a conversation, not latency.

Counters are read as Prometheus' ``rate()`` reads them: a value lower than
the previous one, or a replica now at another address (a restarted process
on a fresh metrics port), is a reset, and the whole new value counts as the
increase. A replica that does not answer in time counts 0 calls and is no
error; its last good scrape stays the baseline, so the calls of a missed
interval are spread over the whole gap when it answers again. The first
scrape of a replica is only a baseline (rates need two points).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from mesh._timeline import Sample
from meshdemo.contract import SERVICE_NAME

__all__ = ["USER_SERVICE", "MetricsScraper", "histogram_quantile"]

_log = logging.getLogger(__name__)

#: The gRPC service whose calls are counted.
USER_SERVICE = SERVICE_NAME
# Codes that are not the server failing (see the module docstring).
_NOT_FAILED = frozenset({"OK", "CANCELLED"})
# Call types whose duration is latency.
_LATENCY_TYPES = frozenset({"unary", "server_stream", "client_stream"})
# A /metrics page of this project is a few tens of kB; more is not a replica.
_MAX_BODY = 4 * 1024 * 1024
_HANDLED = "grpc_server_handled"
_HANDLING = "grpc_server_handling_seconds"


@dataclass(frozen=True, slots=True)
class _Counts:
    """One replica's cumulative numbers at one scrape."""

    calls: float
    failures: float
    # Cumulative count per upper bound ("le"), +Inf included, ascending.
    buckets: tuple[tuple[float, float], ...]

    def minus(self, earlier: _Counts) -> _Counts:
        """The increase since ``earlier``; all of self after a counter reset."""
        if self.calls < earlier.calls or any(
            now < then for (_, now), (_, then) in zip(self.buckets, earlier.buckets, strict=False)
        ):
            return self
        then = dict(earlier.buckets)
        return _Counts(
            self.calls - earlier.calls,
            max(self.failures - earlier.failures, 0.0),
            tuple((le, max(n - then.get(le, 0.0), 0.0)) for le, n in self.buckets),
        )


@dataclass(frozen=True, slots=True)
class _Seen:
    """The last good scrape of one replica: where, what, when."""

    target: str
    counts: _Counts
    at: float


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, like Prometheus.

    Linear interpolation within the bucket where the rank ``q * total`` falls,
    from the bucket below's bound (0 for the first bucket); a rank in the
    ``+Inf`` bucket gives the highest finite bound. None without observations.

    Raises:
        ValueError: ``q`` outside [0, 1].
    """
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, got {q}")
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _counts_from(text: str, service: str) -> _Counts:
    """Sum one /metrics page's user-service calls, failures and latency buckets."""
    calls = failures = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (_HANDLED, _HANDLING):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("grpc_service") != service:
                continue
            if sample.name == _HANDLED + "_total":
                calls += sample.value
                if labels.get("grpc_code") not in _NOT_FAILED:
                    failures += sample.value
            elif sample.name == _HANDLING + "_bucket" and labels["grpc_type"] in _LATENCY_TYPES:
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return _Counts(calls, failures, tuple(sorted(buckets.items())))


def _split_target(target: str) -> tuple[str, int]:
    """``host:port`` of a loopback metrics endpoint.

    Raises:
        ValueError: Not ``host:port``, or a host off loopback.
    """
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a metrics target is host:port, not {target!r}")
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"metrics are only scraped on loopback, not {host}")
    return host, int(port)


async def _get_metrics(target: str, timeout: float) -> str:
    """The body of ``GET http://target/metrics`` (HTTP/1.0: the server closes after it).

    Raises:
        OSError: Connection refused or reset, or a non-200 answer.
        TimeoutError: No whole answer within ``timeout`` seconds.
    """
    host, port = _split_target(target)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /metrics HTTP/1.0\r\nHost: {target}\r\n\r\n".encode("ascii"))
            await writer.drain()
            answer = await _read_to_end(reader)
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"{target} answered {head[:80]!r}")
    return body.decode("utf-8", errors="replace")


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (HTTP/1.0), at most ``_MAX_BODY`` bytes.

    Raises:
        OSError: The answer is larger than that.
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > _MAX_BODY:
            raise OSError(f"a metrics page over {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class MetricsScraper:
    """Turns successive scrapes of the replicas' ``/metrics`` into timeline samples.

    Args:
        service: The gRPC service whose calls count.
        timeout: Seconds one replica gets to answer a scrape.
        clock: Monotonic seconds; injected for tests.
        started: The run's start on ``clock``; a sample's ``t`` is seconds since it.
            Defaults to the scraper's creation.
    """

    def __init__(
        self,
        *,
        service: str = USER_SERVICE,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self._service = service
        self._timeout = timeout
        self._clock = clock
        self._started = clock() if started is None else started
        self._seen: dict[str, _Seen] = {}

    async def scrape(self, targets: Mapping[str, str]) -> Sample:
        """Scrape every replica and return the interval since each one's last good scrape.

        Args:
            targets: Replica name -> ``host:port`` of its metrics endpoint
                (loopback only). Replicas no longer listed are forgotten.

        Returns:
            Calls/s per listed replica (0 for one that did not answer or is new),
            the interval's p99 in ms (None without calls) and its failed calls.

        Raises:
            ValueError: A target that is not a loopback ``host:port``.
        """
        for target in targets.values():
            _split_target(target)
        pages = await asyncio.gather(*(self._fetch(t) for t in targets.values()))
        now = self._clock()
        self._seen = {n: s for n, s in self._seen.items() if n in targets}
        rates: dict[str, float] = {}
        increases: list[_Counts] = []
        for (name, target), counts in zip(targets.items(), pages, strict=True):
            rate, increase = self._account(name, target, counts, now)
            rates[name] = rate
            if increase is not None:
                increases.append(increase)
        return Sample(
            max(now - self._started, 0.0), rates, _p99_ms(increases), _failures(increases)
        )

    def _account(
        self, name: str, target: str, counts: _Counts | None, now: float
    ) -> tuple[float, _Counts | None]:
        """One replica's rate and increase; updates its baseline."""
        if counts is None:
            return 0.0, None
        seen = self._seen.get(name)
        self._seen[name] = _Seen(target, counts, now)
        if seen is None:
            return 0.0, None  # a baseline only
        # Another address is another process: its counters started from zero.
        increase = counts if seen.target != target else counts.minus(seen.counts)
        span = now - seen.at
        return (increase.calls / span if span > 0 else 0.0), increase

    async def _fetch(self, target: str) -> _Counts | None:
        """The replica's numbers now; None if it did not answer with a metrics page."""
        try:
            return _counts_from(await _get_metrics(target, self._timeout), self._service)
        except (OSError, TimeoutError, ValueError, KeyError) as exc:
            _log.debug("scrape of %s failed: %s", target, str(exc) or type(exc).__name__)
            return None

    def __repr__(self) -> str:
        return f"MetricsScraper({self._service}, {len(self._seen)} replica(s) seen)"


def _p99_ms(increases: list[_Counts]) -> float | None:
    merged: dict[float, float] = {}
    for increase in increases:
        for bound, count in increase.buckets:
            merged[bound] = merged.get(bound, 0.0) + count
    seconds = histogram_quantile(0.99, list(merged.items()))
    return None if seconds is None else seconds * 1000.0


def _failures(increases: list[_Counts]) -> int:
    return round(sum(increase.failures for increase in increases))
