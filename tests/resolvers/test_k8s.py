"""KubernetesResolver against a fake Kubernetes API server.

No Kubernetes cluster can run here, so ``fake_k8s.FakeKubernetesApi`` (a real
HTTP server on 127.0.0.1, port 0) stands in for the Kubernetes API: it serves
EndpointSlice lists and ``watch=true`` streams of newline-delimited JSON
events, which each test drives. The resolver talks to it through the real
``kubernetes`` client. Only the resolver's sleep and random source are
replaced, so backoff is exact and instant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration
from kubernetes.config import ConfigException

from client._discovery_backoff import DiscoveryBackoff
from client._k8s import KubernetesResolver, load_api_configuration
from client._resolver import Address, TargetError, resolver_for
from client.testing import eventually
from tests.resolvers.fake_k8s import FakeKubernetesApi, endpoint, endpoint_slice
from tests.resolvers.helpers import Collector, addrs

NO_JITTER = DiscoveryBackoff(initial=1.0, multiplier=2.0, cap=8.0, jitter=0.0)


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApi]:
    api = FakeKubernetesApi()
    api.start()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
async def api_client(fake: FakeKubernetesApi) -> AsyncIterator[ApiClient]:
    configuration = Configuration()
    configuration.host = fake.url
    client = ApiClient(configuration)
    try:
        yield client
    finally:
        client.close()


class Sleeps:
    """An instant sleep that records what was asked."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make(api_client: ApiClient, sleeps: Sleeps, tmp_path: Path) -> Iterator[Any]:
    made: list[KubernetesResolver] = []

    def build(target: str = "users.mesh:50051", **options: Any) -> KubernetesResolver:
        options.setdefault("api_client", api_client)
        options.setdefault("service_account_dir", tmp_path / "no-service-account")
        resolver = KubernetesResolver.from_target(
            "", target, sleep=sleeps, random=lambda: 1.0, backoff=NO_JITTER, **options
        )
        made.append(resolver)
        return resolver

    yield build
    assert all(r._task is None for r in made), "a test forgot close()"


def two_replicas() -> list[dict[str, Any]]:
    return [
        endpoint_slice("users-a", [endpoint("127.0.0.2"), endpoint("127.0.0.3", ready=False)]),
        endpoint_slice("users-b", [endpoint("127.0.0.4", ready=None)]),  # unset means ready
    ]


async def test_initial_list_merges_the_ready_endpoints_of_every_slice(
    fake: FakeKubernetesApi, make: Any
) -> None:
    for s in two_replicas():
        fake.upsert(s)
    fake.upsert(endpoint_slice("other-a", [endpoint("127.0.0.9")], service="other"))
    fake.upsert(endpoint_slice("users-x", [endpoint("127.0.0.8")], namespace="elsewhere"))
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == addrs("127.0.0.2", "127.0.0.4")
        await eventually(lambda: fake.count(watch=True) == 1)
        listing, watch = fake.requests
        assert listing["path"] == "/apis/discovery.k8s.io/v1/namespaces/mesh/endpointslices"
        assert listing["labelSelector"] == "kubernetes.io/service-name=users"
        # The watch starts at the list's resourceVersion.
        assert watch["resourceVersion"] == "104"
        assert watch["allowWatchBookmarks"] == "true"
    finally:
        await resolver.close()


async def test_an_empty_service_publishes_the_empty_set(fake: FakeKubernetesApi, make: Any) -> None:
    resolver = make()
    try:
        assert await anext(resolver.updates()) == frozenset()
    finally:
        await resolver.close()


async def test_endpoints_becoming_ready_and_unready_are_published(
    fake: FakeKubernetesApi, make: Any
) -> None:
    fake.upsert(
        endpoint_slice("users-a", [endpoint("127.0.0.2"), endpoint("127.0.0.3", ready=False)])
    )
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == addrs("127.0.0.2")
        await eventually(lambda: fake.open_watches == 1)
        fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2"), endpoint("127.0.0.3")]))
        assert await collector.wait_for(2) == addrs("127.0.0.2", "127.0.0.3")
        fake.upsert(
            endpoint_slice("users-a", [endpoint("127.0.0.2", ready=False), endpoint("127.0.0.3")])
        )
        assert await collector.wait_for(3) == addrs("127.0.0.3")
        # A change that leaves the ready set alone publishes nothing.
        fake.upsert(
            endpoint_slice(
                "users-a",
                [endpoint("127.0.0.2", ready=False, serving=False), endpoint("127.0.0.3")],
            )
        )
        fake.upsert(endpoint_slice("users-b", [endpoint("127.0.0.5")]))
        assert await collector.wait_for(4) == addrs("127.0.0.3", "127.0.0.5")
        assert len(collector.sets) == 4
        assert fake.count(watch=False) == 1  # all of it came through the one watch
    finally:
        await resolver.close()


async def test_a_deleted_slice_takes_its_endpoints_away(fake: FakeKubernetesApi, make: Any) -> None:
    for s in two_replicas():
        fake.upsert(s)
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: fake.open_watches == 1)
        fake.delete("mesh", "users-a")
        assert await collector.wait_for(2) == addrs("127.0.0.4")
        fake.delete("mesh", "users-b")
        assert await collector.wait_for(3) == frozenset()
    finally:
        await resolver.close()


async def test_a_named_port_is_looked_up_in_each_slice(fake: FakeKubernetesApi, make: Any) -> None:
    fake.upsert(
        endpoint_slice(
            "users-a", [endpoint("127.0.0.2")], ports=[("metrics", 9090), ("grpc", 50051)]
        )
    )
    fake.upsert(endpoint_slice("users-b", [endpoint("127.0.0.3")], ports=[("grpc", 50052)]))
    fake.upsert(endpoint_slice("users-c", [endpoint("127.0.0.4")], ports=[("http", 8080)]))
    named = make("users.mesh:grpc")
    numbered = make("users.mesh:7000")
    try:
        assert await anext(named.updates()) == frozenset(
            {Address("127.0.0.2", 50051), Address("127.0.0.3", 50052)}
        )
        assert await anext(numbered.updates()) == addrs(
            "127.0.0.2", "127.0.0.3", "127.0.0.4", port=7000
        )
    finally:
        await named.close()
        await numbered.close()


async def test_ipv6_slices_count_and_fqdn_slices_do_not(fake: FakeKubernetesApi, make: Any) -> None:
    fake.upsert(endpoint_slice("users-v6", [endpoint("::1")], address_type="IPv6"))
    fake.upsert(endpoint_slice("users-fqdn", [endpoint("replica.example")], address_type="FQDN"))
    resolver = make()
    try:
        assert await anext(resolver.updates()) == addrs("::1")
    finally:
        await resolver.close()


async def test_serving_terminating_endpoints_are_used_only_when_none_is_ready(
    fake: FakeKubernetesApi, make: Any
) -> None:
    draining = endpoint("127.0.0.2", ready=False, serving=True, terminating=True)
    gone = endpoint("127.0.0.3", ready=False, serving=False, terminating=True)
    fake.upsert(endpoint_slice("users-a", [draining, gone]))
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        assert await collector.wait_for(1) == addrs("127.0.0.2")
        await eventually(lambda: fake.open_watches == 1)
        fake.upsert(endpoint_slice("users-b", [endpoint("127.0.0.4")]))
        assert await collector.wait_for(2) == addrs("127.0.0.4")  # the fallback ends
        fake.delete("mesh", "users-b")
        assert await collector.wait_for(3) == addrs("127.0.0.2")
        fake.upsert(endpoint_slice("users-a", [gone]))
        assert await collector.wait_for(4) == frozenset()
    finally:
        await resolver.close()


async def test_watch_expiry_410_lists_again(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps
) -> None:
    for s in two_replicas():
        fake.upsert(s)
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: fake.open_watches == 1)
        # A change whose event was compacted away: only a new list can see it.
        fake.upsert(endpoint_slice("users-b", [endpoint("127.0.0.5")]), silently=True)
        fake.expire_watches()
        assert await collector.wait_for(2) == addrs("127.0.0.2", "127.0.0.5")
        assert fake.count(watch=False) == 2
        await eventually(lambda: fake.open_watches == 1)
        assert fake.requests[-1]["resourceVersion"] == "103"  # the new list's
        assert sleeps.delays == []  # expiry is routine, not a failure
    finally:
        await resolver.close()


async def test_a_watch_refused_with_http_410_lists_again(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    fake.fail_watches(410)
    resolver = make()
    try:
        assert await anext(resolver.updates()) == addrs("127.0.0.2")
        await eventually(lambda: fake.open_watches == 1)
        assert fake.count(watch=False) == 2
        assert sleeps.delays == []
    finally:
        await resolver.close()


async def test_a_watch_ended_by_the_server_resumes_from_its_resource_version(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: fake.open_watches == 1)
        fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.3")]))
        await collector.wait_for(2)
        await asyncio.sleep(1.1)  # longer than a "very short" watch
        fake.end_watches()
        await eventually(lambda: fake.count(watch=True) == 2 and fake.open_watches == 1)
        assert fake.requests[-1]["resourceVersion"] == "102"  # the last event's version
        assert fake.count(watch=False) == 1
        assert sleeps.delays == []
    finally:
        await resolver.close()


async def test_api_errors_back_off_exponentially_then_recover(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    fake.fail_lists(500, 503, 500, 500, 500)
    resolver = make()
    with caplog.at_level(logging.WARNING, logger="client._k8s"):
        try:
            assert await anext(resolver.updates()) == addrs("127.0.0.2")
            assert sleeps.delays == [1.0, 2.0, 4.0, 8.0, 8.0]
            assert "HTTP 503" in caplog.text
        finally:
            await resolver.close()


@pytest.mark.parametrize("failure", [500, "error-500", "garbage", "close"])
async def test_watch_failures_keep_the_last_set_back_off_and_list_again(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps, failure: int | str
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    fake.fail_watches(failure, failure)
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: fake.open_watches == 1)
        assert sleeps.delays == [1.0, 2.0]  # two failed watches in a row
        assert fake.count(watch=False) == 3
        assert collector.sets == [addrs("127.0.0.2")]
        assert not collector.ended
        fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.3")]))
        assert await collector.wait_for(2) == addrs("127.0.0.3")
    finally:
        await resolver.close()


async def test_an_error_after_a_known_set_keeps_it(
    fake: FakeKubernetesApi, make: Any, sleeps: Sleeps
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    resolver = make()
    collector = Collector(resolver.updates())
    try:
        await collector.wait_for(1)
        await eventually(lambda: fake.open_watches == 1)
        fake.fail_lists(500, 500)
        fake.expire_watches()
        await eventually(lambda: fake.count(watch=False) == 4 and fake.open_watches == 1)
        assert sleeps.delays == [1.0, 2.0]
        assert resolver.current == addrs("127.0.0.2")
        assert collector.sets == [addrs("127.0.0.2")]
    finally:
        await resolver.close()


async def test_an_unreachable_api_server_is_retried(
    make: Any, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    closed = FakeKubernetesApi()  # bound, never started, then closed: its port refuses
    url = closed.url
    closed._server.server_close()
    configuration = Configuration()
    configuration.host = url
    configuration.retries = 0
    client = ApiClient(configuration)
    resolver = make(api_client=client)
    try:
        with caplog.at_level(logging.WARNING, logger="client._k8s"):
            resolver.start()
            await eventually(lambda: len(sleeps.delays) >= 3)
        assert sleeps.delays[:3] == [1.0, 2.0, 4.0]
        assert resolver.current is None
        assert "Kubernetes API failed" in caplog.text
    finally:
        await resolver.close()
        client.close()


async def test_close_ends_every_iterator_and_the_watch(fake: FakeKubernetesApi, make: Any) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    resolver = make()
    collectors = [Collector(resolver.updates()) for _ in range(3)]
    for collector in collectors:
        await collector.wait_for(1)
    await eventually(lambda: fake.open_watches == 1)
    await asyncio.wait_for(resolver.close(), 5)
    for collector in collectors:
        await collector.wait_ended()
    await eventually(lambda: fake.open_watches == 0)
    assert [s async for s in resolver.updates()] == []


async def test_the_resolver_loads_a_kubeconfig_outside_a_cluster(
    fake: FakeKubernetesApi, tmp_path: Path, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: {fake.url}\n"
        "users:\n- name: me\n  user:\n    token: secret-token\n"
        "contexts:\n- name: test\n  context:\n    cluster: fake\n    user: me\n"
    )
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    resolver = KubernetesResolver.from_target(
        "", "users.mesh:50051", kubeconfig=str(kubeconfig),
        service_account_dir=tmp_path / "none", sleep=sleeps,
    )  # fmt: skip
    try:
        assert await anext(resolver.updates()) == addrs("127.0.0.2")
    finally:
        await resolver.close()
    assert resolver._own_client is None  # the client it made was closed


async def test_no_configuration_at_all_is_logged_and_retried(
    tmp_path: Path,
    sleeps: Sleeps,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    resolver = KubernetesResolver(
        "users", "mesh", 50051, kubeconfig=str(tmp_path / "missing"),
        service_account_dir=tmp_path / "none", sleep=sleeps, random=lambda: 1.0,
    )  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="client._k8s"):
            resolver.start()
            await eventually(lambda: len(sleeps.delays) >= 2)
        assert "no Kubernetes configuration" in caplog.text
    finally:
        await resolver.close()


def test_in_cluster_configuration_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    configuration = load_api_configuration(tmp_path, kubeconfig=str(tmp_path / "missing"))
    assert configuration.host == "https://127.0.0.1:6443"
    assert configuration.api_key["BearerToken"] == "bearer pod-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_neither_configuration_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException, match="no Kubernetes configuration"):
        load_api_configuration(tmp_path, kubeconfig=str(tmp_path / "missing"))


def test_the_namespace_defaults_to_the_pods_own(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("team-a\n")
    resolver = KubernetesResolver.from_target("", "users:grpc", service_account_dir=tmp_path)
    assert repr(resolver) == "KubernetesResolver(k8s:///users.team-a:grpc)"
    outside = KubernetesResolver.from_target("", "users:grpc", service_account_dir=tmp_path / "x")
    assert repr(outside) == "KubernetesResolver(k8s:///users.default:grpc)"


def test_resolver_for_builds_a_kubernetes_resolver() -> None:
    resolver = resolver_for("k8s:///users.mesh:50051")
    assert isinstance(resolver, KubernetesResolver)
    assert repr(resolver) == "KubernetesResolver(k8s:///users.mesh:50051)"
    resolver.resolve_now()  # a no-op: the watch pushes changes


@pytest.mark.parametrize(
    ("netloc", "path"),
    [
        ("mesh", "users:50051"),  # no authority form
        ("", "users.mesh"),  # no port
        ("", "users.mesh:"),
        ("", "users.mesh:0"),
        ("", "users.mesh:70000"),
        ("", "users.mesh:Grpc"),  # port names are lower case
        ("", "users.mesh:a-very-long-port-name"),
        ("", "users.mesh:123-"),
        ("", "Users.mesh:50051"),
        ("", "users.mesh.svc:50051"),
        ("", "users.-mesh:50051"),
        ("", ":50051"),
    ],
)
def test_malformed_targets_are_rejected(netloc: str, path: str) -> None:
    with pytest.raises(TargetError):
        KubernetesResolver.from_target(netloc, path)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="watch_timeout"):
        KubernetesResolver("users", "mesh", 50051, watch_timeout=0)


async def test_an_api_failure_is_the_last_failure_until_a_list_succeeds(
    fake: FakeKubernetesApi, make: Any
) -> None:
    fake.upsert(endpoint_slice("users-a", [endpoint("127.0.0.2")]))
    fake.fail_lists(503)
    resolver = make()
    seen: list[str | None] = []

    async def sleep(seconds: float) -> None:  # the backoff's wait, right after the failure
        seen.append(resolver.last_failure)
        await asyncio.sleep(0)

    resolver._sleep = sleep
    try:
        assert await anext(resolver.updates()) == addrs("127.0.0.2")
        [reason] = seen
        assert reason is not None
        assert reason.startswith("Kubernetes API failed: HTTP 503")
        assert resolver.last_failure is None
    finally:
        await resolver.close()
