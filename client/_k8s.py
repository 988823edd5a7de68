"""``k8s:///service.namespace:port``: the ready endpoints of a Service's EndpointSlices.

The resolver lists the ``discovery.k8s.io/v1`` EndpointSlices labelled
``kubernetes.io/service-name=<service>``, then watches them from the list's
resourceVersion, and publishes the union of their ready endpoints. A watch
that expires (HTTP 410 Gone, or an ERROR event with code 410) is followed by
a fresh list; any other failure keeps the last known set and is retried with
exponential backoff and jitter.

Which endpoints count (see docs/k8s-resolver.md):

* ``conditions.ready`` true, or unset (the API says nil means ready);
* when no endpoint of the service is ready, the ones that are ``serving``
  while ``terminating`` (the fallback kube-proxy uses), so that a rollout of
  a single replica does not leave the client with nothing;
* ``addressType`` IPv4 and IPv6 only (FQDN slices are deprecated and skipped).

The sync ``kubernetes`` client is used: every blocking call (config loading,
list, each read of the watch stream) runs in a worker thread. Closing the
resolver shuts the watch socket down, so no thread outlives it by more than
one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random as _random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes.client import ApiClient, Configuration, DiscoveryV1Api
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config import ConfigException, load_kube_config
from kubernetes.config.incluster_config import InClusterConfigLoader

from client._discovery_backoff import DiscoveryBackoff
from client._feed import FeedResolver
from client._resolver import Address, TargetError

__all__ = ["SERVICE_ACCOUNT_DIR", "KubernetesResolver", "load_api_configuration"]

_log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_SERVICE_LABEL = "kubernetes.io/service-name"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")
_READ_SIZE = 64 * 1024


# Failures of the API or of its data; anything else is a bug and ends the task.
_FAILURES = (
    ApiException,
    OpenApiException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,  # includes malformed JSON
    KeyError,  # a required field missing
    TypeError,  # a field of the wrong shape
    ConfigException,
)

# The config loaders have no annotations; these names give them types.
_in_cluster_loader: Callable[..., Any] = InClusterConfigLoader
_load_kube_config: Callable[..., None] = load_kube_config

_SHORT_WATCH = 1.0  # seconds: a watch that ends sooner with no event is a failure


class _Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class _WatchError(ValueError):
    """An ERROR event other than 410, or a malformed event."""


@dataclass(frozen=True, slots=True)
class _SliceEndpoints:
    """What one EndpointSlice contributes."""

    ready: frozenset[Address]
    # Serving but terminating: used only when no endpoint of the service is ready.
    terminating: frozenset[Address]


class KubernetesResolver(FeedResolver):
    """Watches a Service's EndpointSlices and publishes its ready endpoints.

    Args:
        service: The Service name.
        namespace: The Service's namespace.
        port: The endpoint port: a number used as is, or the name of a port
            in the EndpointSlices (looked up per slice, TCP only).
        api_client: A configured client to use (the caller keeps ownership);
            None to load in-cluster config, else the kubeconfig.
        kubeconfig: The kubeconfig path(s) when no ``api_client`` is given;
            None for ``$KUBECONFIG`` or ``~/.kube/config``.
        service_account_dir: Where the pod's service account files are (token,
            ca.crt, namespace); injected for tests.
        watch_timeout: Seconds the API server keeps one watch open.
        connect_timeout: Seconds to connect to the API server.
        backoff: Delays after consecutive failures.
        clock: Monotonic seconds, to tell a watch that ended at once; injected for tests.
        sleep: Waits the given seconds; injected for tests.
        random: Floats in ``[0, 1)`` for backoff jitter; injected for tests.
    """

    def __init__(
        self,
        service: str,
        namespace: str,
        port: int | str,
        *,
        api_client: ApiClient | None = None,
        kubeconfig: str | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        watch_timeout: int = 300,
        connect_timeout: float = 10.0,
        backoff: DiscoveryBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        super().__init__()
        _check_target(service, namespace, port)
        if watch_timeout < 1 or connect_timeout <= 0:
            raise ValueError("watch_timeout must be >= 1 and connect_timeout > 0")
        self._service = service
        self._namespace = namespace
        self._port = port
        self._given_client = api_client
        self._own_client: ApiClient | None = None
        self._kubeconfig = kubeconfig
        self._sa_dir = service_account_dir
        self._watch_timeout = watch_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff or DiscoveryBackoff()
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._slices: dict[str, _SliceEndpoints] = {}
        self._failures = 0

    @classmethod
    def from_target(cls, netloc: str, path: str, **options: Any) -> KubernetesResolver:
        """Build from the authority and path of a ``k8s:`` target.

        Args:
            netloc: Must be empty (the API server comes from the configuration).
            path: ``service[.namespace]:port``; the namespace defaults to the
                pod's own (its service account's namespace file), else
                ``default``; the port is a number or a port name.
            **options: Keyword arguments for the constructor.

        Raises:
            TargetError: A malformed target.
        """
        if netloc:
            raise TargetError(f"k8s targets take no authority, got {netloc!r}; use k8s:///svc:port")
        name, sep, port_text = path.rpartition(":")
        if not sep or not port_text:
            raise TargetError(f"k8s target {path!r} needs a port: service.namespace:port")
        service, dot, namespace = name.partition(".")
        if not dot:
            sa_dir = options.get("service_account_dir", SERVICE_ACCOUNT_DIR)
            namespace = _own_namespace(Path(sa_dir))
        port: int | str = (
            int(port_text) if port_text.isascii() and port_text.isdigit() else port_text
        )
        return cls(service, namespace, port, **options)

    def resolve_now(self) -> None:
        """Do nothing: the watch pushes every change as it happens."""

    def __repr__(self) -> str:
        return f"KubernetesResolver(k8s:///{self._service}.{self._namespace}:{self._port})"

    # The loop: list, watch until expired, list again; back off on failures.

    async def _run(self) -> None:
        while True:
            try:
                api = await self._api()
                version = await self._list(api)
                await self._watch(api, version)
            except _Gone:
                _log.info("%r: watch expired (410 Gone), listing again", self)
            except _FAILURES as exc:
                await self._back_off(exc)

    async def _back_off(self, exc: BaseException) -> None:
        self._failures += 1
        self._record_failure(f"Kubernetes API failed: {_describe(exc)}")
        delay = self._backoff.delay(self._failures, self._random)
        _log.warning(
            "%r: Kubernetes API failed (%d in a row), keeping %d endpoint(s), retry in %.1fs: %s",
            self,
            self._failures,
            len(self.current or ()),
            delay,
            _describe(exc),
        )
        await self._sleep(delay)

    async def _api(self) -> DiscoveryV1Api:
        client = self._given_client or self._own_client
        if client is None:
            configuration = await asyncio.to_thread(
                load_api_configuration, self._sa_dir, self._kubeconfig
            )
            client = self._own_client = ApiClient(configuration)
        return DiscoveryV1Api(client)

    async def _aclose_resources(self) -> None:
        client, self._own_client = self._own_client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]  # generated code without annotations

    async def _list(self, api: DiscoveryV1Api) -> str:
        """List the slices, replace the known ones, publish; the list's resourceVersion."""
        response = await asyncio.to_thread(self._request, api, None)
        try:
            body = await asyncio.to_thread(lambda: response.data)
        finally:
            response.release_conn()
        listing = json.loads(body)
        self._slices = {
            _name(item): self._endpoints_of(item) for item in listing.get("items") or ()
        }
        self._publish_merged()
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, api: DiscoveryV1Api, version: str) -> None:
        """Apply watch events until the watch expires (raises ``_Gone``) or fails."""
        while True:
            try:
                response = await asyncio.to_thread(self._request, api, version)
            except ApiException as exc:
                if exc.status == 410:
                    raise _Gone from exc
                raise
            started, events = self._clock(), 0
            stream = _LineStream(response)
            try:
                async for line in stream.lines():
                    version = self._apply(json.loads(line), version)
                    events += 1
            finally:
                await stream.close()
            if not events and self._clock() - started < _SHORT_WATCH:
                # As client-go's reflector: a watch closed at once is broken, not quiet.
                raise _WatchError("the watch ended at once without any event")
            # Otherwise the server ended it at its timeout: watch on from `version`.

    def _request(self, api: DiscoveryV1Api, watch_from: str | None) -> urllib3.HTTPResponse:
        """One list (``watch_from`` None) or watch request; blocking."""
        watch: dict[str, Any] = {} if watch_from is None else {
            "watch": True,
            "resource_version": watch_from,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self._watch_timeout,
        }  # fmt: skip
        read_timeout = self._watch_timeout + 30 if watch else 30
        # With _preload_content=False the client returns the raw urllib3 response.
        response = api.list_namespaced_endpoint_slice(
            self._namespace,
            label_selector=f"{_SERVICE_LABEL}={self._service}",
            _preload_content=False,
            _request_timeout=(self._connect_timeout, read_timeout),
            **watch,
        )
        return cast(urllib3.HTTPResponse, response)

    def _apply(self, event: Mapping[str, Any], version: str) -> str:
        """Apply one watch event; the resourceVersion to resume from."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise _WatchError(f"watch ERROR event: {obj.get('code')} {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED"):
            self._slices[_name(obj)] = self._endpoints_of(obj)
        elif kind == "DELETED":
            self._slices.pop(_name(obj), None)
        elif kind != "BOOKMARK":
            raise _WatchError(f"unknown watch event type {kind!r}")
        if kind != "BOOKMARK":
            self._failures = 0  # the watch delivers: the API is healthy
            self._publish_merged()
        return str((obj.get("metadata") or {}).get("resourceVersion") or version)

    def _publish_merged(self) -> None:
        ready = frozenset[Address]().union(*(s.ready for s in self._slices.values()))
        if not ready:
            ready = ready.union(*(s.terminating for s in self._slices.values()))
        self._publish(ready)

    def _endpoints_of(self, slice_: Mapping[str, Any]) -> _SliceEndpoints:
        empty = _SliceEndpoints(frozenset(), frozenset())
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            return empty
        port = self._slice_port(slice_)
        if port is None:
            return empty
        ready: set[Address] = set()
        terminating: set[Address] = set()
        for endpoint in slice_.get("endpoints") or ():
            target = _classify(endpoint.get("conditions") or {}, ready, terminating)
            if target is not None:
                target.update(Address(ip, port) for ip in endpoint.get("addresses") or ())
        return _SliceEndpoints(frozenset(ready), frozenset(terminating))

    def _slice_port(self, slice_: Mapping[str, Any]) -> int | None:
        if isinstance(self._port, int):
            return self._port
        for port in slice_.get("ports") or ():
            if port.get("name") == self._port and port.get("protocol", "TCP") == "TCP":
                number = port.get("port")
                return number if isinstance(number, int) else None
        _log.debug("%r: slice %s has no TCP port named %r", self, _name(slice_), self._port)
        return None


def _classify(
    conditions: Mapping[str, Any], ready: set[Address], terminating: set[Address]
) -> set[Address] | None:
    """Which set an endpoint with these conditions belongs to, if any.

    Per the API, nil ``ready`` means ready, nil ``serving`` defers to ``ready``,
    nil ``terminating`` means not terminating.
    """
    is_ready = conditions.get("ready") is not False
    if is_ready:
        return ready
    serving = conditions.get("serving")
    if conditions.get("terminating") is True and serving is True:
        return terminating
    return None


class _LineStream:
    """Newline-delimited JSON from a watch response, read in a worker thread.

    Invariant: at most one read is in flight; ``close()`` first interrupts it
    (socket shutdown) and waits for it, so the response is never closed under
    a reading thread.
    """

    def __init__(self, response: urllib3.HTTPResponse) -> None:
        self._response = response
        self._read: asyncio.Future[bytes] | None = None

    async def lines(self) -> AsyncIterator[bytes]:
        buffer = b""
        while True:
            self._read = asyncio.ensure_future(asyncio.to_thread(self._response.read1, _READ_SIZE))
            chunk = await asyncio.shield(self._read)
            self._read = None
            if not chunk:
                if buffer.strip():
                    yield buffer
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line

    async def close(self) -> None:
        read, self._read = self._read, None
        if read is not None:
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                self._response.shutdown()
            with contextlib.suppress(Exception):
                await read
        self._response.close()
        self._response.release_conn()


def load_api_configuration(
    service_account_dir: Path = SERVICE_ACCOUNT_DIR, kubeconfig: str | None = None
) -> Configuration:
    """The API client configuration: in-cluster when available, else kubeconfig.

    Args:
        service_account_dir: Where the pod's token and ca.crt are.
        kubeconfig: Kubeconfig path(s); None for ``$KUBECONFIG`` or ``~/.kube/config``.

    Raises:
        ConfigException: Neither in-cluster configuration nor a kubeconfig.
    """
    configuration = Configuration()
    try:
        _in_cluster_loader(
            token_filename=str(service_account_dir / "token"),
            cert_filename=str(service_account_dir / "ca.crt"),
        ).load_and_set(configuration)
    except ConfigException as in_cluster:
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            _load_kube_config(config_file=path, client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise ConfigException(
                f"no Kubernetes configuration: not in a cluster ({in_cluster}); "
                f"kubeconfig {path}: {exc}"
            ) from exc
    return configuration


def _own_namespace(service_account_dir: Path) -> str:
    """The pod's namespace from its service account, else ``default``."""
    try:
        namespace = (service_account_dir / "namespace").read_text().strip()
    except OSError:
        return "default"
    return namespace or "default"


def _check_target(service: str, namespace: str, port: int | str) -> None:
    if not _DNS_LABEL.fullmatch(service):
        raise TargetError(f"bad Service name {service!r} (a DNS label is expected)")
    if not _DNS_LABEL.fullmatch(namespace):
        raise TargetError(f"bad namespace {namespace!r} (a DNS label is expected)")
    if isinstance(port, int):
        if not 0 < port < 65536:
            raise TargetError(f"bad port {port}")
    elif not _PORT_NAME.fullmatch(port) or not re.search("[a-z]", port):
        raise TargetError(f"bad port name {port!r}")


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {})["name"])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__
