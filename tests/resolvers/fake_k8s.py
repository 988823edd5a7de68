"""A fake Kubernetes API server for EndpointSlices: list and watch, on 127.0.0.1.

No cluster can run here, so this small HTTP server stands in for the
Kubernetes API. It keeps EndpointSlices with resourceVersions and an event
history, as the real API server does: a list returns the slices matching the
label selector and the current resourceVersion; a watch (``watch=true``)
replays the events after the given resourceVersion and then streams new ones
as newline-delimited JSON (ADDED, MODIFIED, DELETED, ERROR). The test drives
it: changes slices, expires watches (ERROR 410), compacts history, and makes
requests fail.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_http import JsonHandler, LoopbackHttpServer

PREFIX = "/apis/discovery.k8s.io/v1/namespaces/"
SERVICE_LABEL = "kubernetes.io/service-name"


def endpoint(
    ip: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> dict[str, Any]:
    """One endpoint of a slice; a condition left None is omitted (unset)."""
    conditions = {"ready": ready, "serving": serving, "terminating": terminating}
    return {
        "addresses": [ip],
        "conditions": {k: v for k, v in conditions.items() if v is not None},
    }


def endpoint_slice(
    name: str,
    endpoints: list[dict[str, Any]],
    *,
    service: str = "users",
    namespace: str = "mesh",
    ports: list[tuple[str, int]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """An EndpointSlice object as the API serves it."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {SERVICE_LABEL: service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [
            {"name": n, "port": p, "protocol": "TCP"} for n, p in (ports or [("grpc", 50051)])
        ],
    }


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": f"fake: {reason}"}  # fmt: skip


class FakeKubernetesApi(LoopbackHttpServer):
    """The fake server's state and controls; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._version = 100
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._oldest_watchable = 0
        self._gone = 0  # bumped to send ERROR 410 to every open watch
        self._ended = 0  # bumped to end every open watch cleanly
        self._closing = False
        self._list_failures: list[int] = []
        self._watch_failures: list[int | str] = []
        self.requests: list[dict[str, str]] = []
        self.open_watches = 0
        super().__init__(_handler_for(self))

    def close(self) -> None:
        """End every open watch, stop serving, release the port."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().close()

    # Driving the state.

    def upsert(self, slice_: dict[str, Any], *, silently: bool = False) -> None:
        """Add or change a slice; ``silently`` leaves no watch event (as if compacted)."""
        with self._cond:
            key = (slice_["metadata"]["namespace"], slice_["metadata"]["name"])
            kind = "MODIFIED" if key in self._slices else "ADDED"
            self._store(key, copy.deepcopy(slice_), kind, silently)

    def delete(self, namespace: str, name: str) -> None:
        with self._cond:
            obj = self._slices.pop((namespace, name))
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)
            self._record("DELETED", obj)

    def expire_watches(self) -> None:
        """Send ERROR 410 to every open watch and forget the history."""
        with self._cond:
            self._gone += 1
            self._oldest_watchable = self._version
            self._cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch cleanly, as the server does at timeoutSeconds."""
        with self._cond:
            self._ended += 1
            self._cond.notify_all()

    def fail_lists(self, *statuses: int) -> None:
        """Answer the next lists with these HTTP statuses."""
        with self._cond:
            self._list_failures.extend(statuses)

    def fail_watches(self, *failures: int | str) -> None:
        """Fail the next watches: an HTTP status, or "garbage", "error-500", "close"."""
        with self._cond:
            self._watch_failures.extend(failures)

    def count(self, watch: bool) -> int:
        with self._cond:
            return sum(1 for r in self.requests if (r.get("watch") == "true") == watch)

    # Serving (called from handler threads).

    def _store(self, key: tuple[str, str], obj: dict[str, Any], kind: str, silently: bool) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._slices[key] = obj
        if silently:
            self._oldest_watchable = self._version
        else:
            self._record(kind, obj)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self._history.append((self._version, {"type": kind, "object": copy.deepcopy(obj)}))
        self._cond.notify_all()

    def list_body(self, namespace: str, service: str) -> tuple[int, dict[str, Any]]:
        with self._cond:
            if self._list_failures:
                code = self._list_failures.pop(0)
                return code, _status(code, "InternalError")
            items = [copy.deepcopy(obj) for (ns, _), obj in sorted(self._slices.items())
                     if ns == namespace and _labelled(obj, service)]  # fmt: skip
            return 200, {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }

    def next_watch_failure(self) -> int | str | None:
        with self._cond:
            return self._watch_failures.pop(0) if self._watch_failures else None

    def watch_events(
        self, namespace: str, service: str, since: int, client_gone: Callable[[], bool]
    ) -> Iterator[dict[str, Any]]:
        """The events after ``since``, then new ones, until expired, closed or hung up."""
        gone = {"type": "ERROR", "object": _status(410, "Expired")}
        with self._cond:
            too_old = since < self._oldest_watchable
            generation = (self._gone, self._ended)
            self.open_watches += not too_old
        if too_old:
            yield gone
            return
        try:
            position = since
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: (
                            self._closing
                            or (self._gone, self._ended) != generation
                            or any(v > position for v, _ in self._history)  # noqa: B023 - called at once
                        ),
                        timeout=0.1,
                    )
                    expired = self._gone != generation[0]
                    ended = self._closing or self._ended != generation[1] or client_gone()
                    new = [(v, e) for v, e in self._history if v > position]
                if expired or ended:
                    if expired:
                        yield gone
                    return
                for version, event in new:
                    position = version
                    obj = event["object"]
                    if obj["metadata"]["namespace"] == namespace and _labelled(obj, service):
                        yield event
        finally:
            with self._cond:
                self.open_watches -= 1


def _labelled(obj: dict[str, Any], service: str) -> bool:
    return bool(obj["metadata"].get("labels", {}).get(SERVICE_LABEL) == service)


def _handler_for(api: FakeKubernetesApi) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            namespace, _, rest = url.path.removeprefix(PREFIX).partition("/")
            with api._cond:
                api.requests.append({"path": url.path, **query})
            selector = query.get("labelSelector", "")
            if not url.path.startswith(PREFIX) or rest != "endpointslices":
                self.send_json(404, _status(404, "NotFound"))
            elif not selector.startswith(SERVICE_LABEL + "="):
                self.send_json(400, _status(400, "BadRequest"))
            elif query.get("watch") == "true":
                self._watch(namespace, selector.partition("=")[2], int(query["resourceVersion"]))
            else:
                self.send_json(*api.list_body(namespace, selector.partition("=")[2]))

        def _watch(self, namespace: str, service: str, since: int) -> None:
            failure = api.next_watch_failure()
            if isinstance(failure, int):
                self.send_json(failure, _status(failure, "Failure"))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            if failure == "close":
                return
            if failure == "garbage":
                self.wfile.write(b"{not json\n")
                return
            if failure == "error-500":
                self._line({"type": "ERROR", "object": _status(500, "InternalError")})
                return
            for event in api.watch_events(namespace, service, since, self._client_gone):
                try:
                    self._line(event)
                except OSError:  # the client went away
                    return

        def _client_gone(self) -> bool:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
            except OSError:
                return True

        def _line(self, event: dict[str, Any]) -> None:
            self.wfile.write(json.dumps(event).encode() + b"\n")
            self.wfile.flush()

    return Handler
