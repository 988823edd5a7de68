"""Rendering the Helm chart with Helm's own engine (``helm_python``), cached per values set.

No cluster is involved: ``lookup`` returns nothing offline, so generated secrets always
take their "generate" branch. A render costs a few hundred milliseconds, so each distinct
(values, options) pair is rendered once per session and shared by every test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from helm_python import _native

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm"
RELEASE = "meshdemo"
NAMESPACE = "mesh"
#: Kubernetes versions every manifest must be valid for (the kind node images: 1.31-1.34).
KUBE_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

#: TLS modes of issue 9: each certificate source, with and without mutual TLS, and the
#: clients that dial the service (loadgen with either resolver, the test pod) turned on.
TLS_SCENARIOS: Mapping[str, dict[str, Any]] = {
    "generated": {"tls": {"enabled": True}, "loadgen": {"enabled": True}},
    "generated-mutual": {
        "tls": {"enabled": True, "mutual": True},
        "loadgen": {"enabled": True, "resolver": "dns"},
        "chaos": {"enabled": True},
    },
    "existing-secret": {"tls": {"enabled": True, "existingSecret": "users-tls"}},
    "existing-secret-mutual": {
        "tls": {
            "enabled": True,
            "mutual": True,
            "existingSecret": "users-tls",
            "existingClientSecret": "users-tls-client",
        },
        "loadgen": {"enabled": True},
    },
    "cert-manager": {"tls": {"enabled": True, "certManager": {"enabled": True}}},
    "cert-manager-issuer-mutual": {
        "tls": {
            "enabled": True,
            "mutual": True,
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
            },
        },
        "loadgen": {"enabled": True},
    },
}

#: The values matrix of issue 7: every scenario must render, validate and pass the policies.
SCENARIOS: Mapping[str, dict[str, Any]] = {
    "defaults": {},
    "jaeger-off": {"jaeger": {"enabled": False}},
    "jaeger-nodeport": {"jaeger": {"service": {"type": "NodePort"}}},
    "external-db-url": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql://app:pw@db.example.internal:5432/users"},
    },
    "external-db-secret": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "users-db", "existingSecretKey": "dsn"},
    },
    "loadgen-k8s": {"loadgen": {"enabled": True, "resolver": "k8s"}},
    "loadgen-dns": {"loadgen": {"enabled": True, "resolver": "dns"}},
    "chaos": {"chaos": {"enabled": True}},
    "chaos-force-evict": {
        "chaos": {"enabled": True, "force": True, "evict": True, "count": 2, "intervalSeconds": 5}
    },
    "network-policies-off": {"networkPolicy": {"enabled": False}},
    "replicas-1": {"users": {"replicas": 1}},
    "replicas-5": {"users": {"replicas": 5}},
    "everything-on": {
        "loadgen": {"enabled": True},
        "chaos": {"enabled": True},
        "auth": {"secretAsFile": True},
        "tracing": {"sampler": "parentbased_traceidratio", "samplerArg": "0.5"},
    },
    "metrics-off": {"metrics": {"enabled": False}},
    "existing-auth-secret": {"auth": {"existingSecret": "my-jwt", "existingSecretKey": "key"}},
    **{f"tls-{name}": values for name, values in TLS_SCENARIOS.items()},
    "admission": {
        "users": {
            "admission": {
                "maxChatStreams": 50,
                "maxListStreams": 25,
                "maxUnaryRpcs": 400,
                "maxStreamsPerPrincipal": 5,
                "chatIdleTimeoutSeconds": 0,
                "handshakeTimeoutSeconds": 2.5,
                "maxConnectionIdleSeconds": 0,
                "maxStreamsPerConnection": 64,
                "maxConnections": 200,
                "defaultCallTimeoutSeconds": 7.5,
                "defaultStreamTimeoutSeconds": 0,
            }
        }
    },
}


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: its manifests as parsed documents, and NOTES.txt."""

    docs: tuple[dict[str, Any], ...]
    notes: str
    sources: Mapping[str, str] = field(repr=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every document of ``kind``."""
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """The one document of ``kind`` named ``name``; fails the test if absent."""
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {self.names()}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        """Whether a document of ``kind`` named ``name`` was rendered."""
        return any(d["metadata"]["name"] == name for d in self.of_kind(kind))

    def names(self) -> list[str]:
        """``Kind/name`` of every document, for failure messages."""
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs]

    def text(self) -> str:
        """All rendered manifests as one string (for searches such as "jaeger")."""
        return "\n".join(text for path, text in self.sources.items() if not path.endswith(".txt"))


def render_sources(
    values: Mapping[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
) -> dict[str, str]:
    """Render the chart; template path -> text. Raises helm_python's errors unchanged.

    Capabilities (extra API versions, the Kubernetes version) are render options of the
    C ABI that ``Chart.render`` does not expose, so the call goes one level down; with
    none of them it is exactly ``Chart.render``.
    """
    with helm_python.Chart.load(CHART_DIR) as chart:
        if not api_versions and kube_version is None:
            return chart.render(dict(values or {}), name=name, namespace=namespace)
        opts: dict[str, Any] = {"name": name, "namespace": namespace}
        if api_versions:
            opts["api_versions"] = list(api_versions)
        if kube_version is not None:
            opts["kube_version"] = kube_version
        payload = _native.call_string(
            "helm_render", chart._raw(), json.dumps(dict(values or {})), json.dumps(opts)
        )
        manifests: dict[str, str] = json.loads(payload)
        return manifests


def parse(sources: Mapping[str, str]) -> Rendered:
    """Split rendered templates into documents; NOTES.txt is kept as text."""
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(sources.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(docs), notes, dict(sources))


_CACHE: dict[str, Rendered] = {}


def render(
    values: Mapping[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: Sequence[str] = (),
    kube_version: str | None = None,
) -> Rendered:
    """The parsed render of these values and options, cached for the session.

    Generated secrets differ between renders; tests that compare two renders compare
    what must be deterministic (the checksum leaves the generated secrets out).
    """
    key = json.dumps(
        [values or {}, name, namespace, list(api_versions), kube_version], sort_keys=True
    )
    if key not in _CACHE:
        _CACHE[key] = parse(
            render_sources(
                values,
                name=name,
                namespace=namespace,
                api_versions=api_versions,
                kube_version=kube_version,
            )
        )
    return _CACHE[key]


# --- views on pods and containers ------------------------------------------------------------


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "CronJob", "Job", "Pod")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet")


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload document of any kind."""
    kind = doc["kind"]
    if kind == "Pod":
        return dict(doc["spec"])
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def pod_labels(doc: Mapping[str, Any]) -> dict[str, str]:
    """The labels of the pods a workload document makes."""
    kind = doc["kind"]
    if kind == "Pod":
        return dict(doc["metadata"]["labels"])
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def workloads(rendered: Rendered) -> list[dict[str, Any]]:
    """Every document that makes pods."""
    return [d for d in rendered.docs if d["kind"] in WORKLOAD_KINDS]


def all_containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Init and regular containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The container ``name`` of a workload."""
    found = [c for c in all_containers(pod_spec(doc)) if c["name"] == name]
    assert len(found) == 1, f"no single container {name} in {doc['metadata']['name']}"
    return found[0]


def iter_containers(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every workload."""
    for doc in workloads(rendered):
        for item in all_containers(pod_spec(doc)):
            yield doc, item


def effective_env(rendered: Rendered, item: Mapping[str, Any]) -> dict[str, Any]:
    """A container's environment: its envFrom ConfigMaps' data, then its env entries.

    Values are the literal string, or the ``valueFrom`` mapping for references.
    """
    env: dict[str, Any] = {}
    for source in item.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"only configMapRef sources are expected, got {source}"
        env.update(rendered.get("ConfigMap", ref["name"])["data"])
    for entry in item.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


@pytest.fixture(params=sorted(SCENARIOS), ids=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Rendered:
    """The render of each scenario of the matrix in turn."""
    return render(SCENARIOS[request.param])


@pytest.fixture
def defaults() -> Rendered:
    """The render with the chart's default values."""
    return render()
