"""The chart renders with Helm's engine, lints clean, and refuses bad values."""

from __future__ import annotations

import base64
from typing import Any

import helm_python
import pytest

from tests.deploy.conftest import (
    CHART_DIR,
    KUBE_VERSIONS,
    SCENARIOS,
    SERVICE_MONITOR_API,
    Rendered,
    container,
    render,
    render_sources,
)

#: The names the e2e script and skaffold rely on (release "meshdemo").
PINNED_NAMES = {
    ("Deployment", "meshdemo-users"),
    ("Service", "meshdemo-users"),
    ("Service", "meshdemo-users-headless"),
    ("Deployment", "meshdemo-jaeger"),
    ("Service", "meshdemo-jaeger"),
    ("StatefulSet", "meshdemo-postgresql"),
    ("Service", "meshdemo-postgresql"),
    ("Secret", "meshdemo-auth"),
    ("Secret", "meshdemo-postgresql"),
    ("ServiceAccount", "meshdemo-users"),
    ("PodDisruptionBudget", "meshdemo-users"),
    ("ConfigMap", "meshdemo-users"),
    ("ConfigMap", "meshdemo-jaeger"),
    ("Pod", "meshdemo-test"),
}


def _kinds_names(rendered: Rendered) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}


def test_defaults_render_the_pinned_names(defaults: Rendered) -> None:
    assert PINNED_NAMES - _kinds_names(defaults) == set()


def test_defaults_leave_loadgen_chaos_and_service_monitor_out(defaults: Rendered) -> None:
    kinds = {d["kind"] for d in defaults.docs}
    assert "CronJob" not in kinds
    assert "ServiceMonitor" not in kinds
    assert not defaults.has("Deployment", "meshdemo-loadgen")


def test_every_scenario_renders_documents_with_kind_and_name(scenario: Rendered) -> None:
    assert scenario.docs
    for doc in scenario.docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc


def test_every_object_carries_the_standard_labels(scenario: Rendered) -> None:
    for doc in scenario.docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("name", "instance", "component", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels["helm.sh/chart"] == "meshdemo-0.1.0"


def test_loadgen_and_chaos_use_their_pinned_names() -> None:
    rendered = render({"loadgen": {"enabled": True}, "chaos": {"enabled": True}})
    loadgen = rendered.get("Deployment", "meshdemo-loadgen")
    assert container(loadgen, "loadgen")
    assert rendered.get("CronJob", "meshdemo-chaos")


@pytest.mark.parametrize(
    ("release", "fullname"),
    [("meshdemo", "meshdemo"), ("demo", "demo-meshdemo"), ("meshdemo-staging", "meshdemo-staging")],
)
def test_fullname_is_the_release_when_it_contains_the_chart_name(
    release: str, fullname: str
) -> None:
    rendered = render(name=release)
    assert rendered.has("Deployment", f"{fullname}-users")
    assert rendered.has("Service", f"{fullname}-users-headless")


def test_fullname_override_wins() -> None:
    rendered = render({"fullnameOverride": "users-demo"})
    assert rendered.has("Deployment", "users-demo-users")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_strict_finds_nothing(kube_version: str) -> None:
    report = helm_python.lint(CHART_DIR, strict=True, kube_version=f"v{kube_version}")
    assert report["errors"] == []
    assert report["messages"] == []


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_strict_finds_nothing_for_each_scenario(name: str) -> None:
    report = helm_python.lint(CHART_DIR, SCENARIOS[name], strict=True, kube_version="v1.30.0")
    assert (report["errors"], report["messages"]) == ([], [])


def test_a_cluster_older_than_1_30_is_refused() -> None:
    # The users' preStop hook is the native sleep action (on by default since 1.30).
    with helm_python.Chart.load(CHART_DIR) as chart:
        assert chart.metadata["kubeVersion"] == ">=1.30.0-0"
    with pytest.raises(helm_python.HelmRenderError, match=r"1\.29\.0 is too old"):
        render_sources(kube_version="v1.29.0")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_supported_version_renders(kube_version: str) -> None:
    assert render(kube_version=f"v{kube_version}").docs


# --- the schema ---------------------------------------------------------------------------------

MISSPELT = [
    {"replicaCount": 3},
    {"users": {"replica": 3}},
    {"users": {"resources": {"request": {"cpu": "1"}}}},
    {"users": {"probes": {"readiness": {"period": 1}}}},
    {"jaeger": {"image": {"tags": "2.21.0"}}},
    {"loadgen": {"resolvr": "dns"}},
    {"networkPolicy": {"apiServer": {"cidr": ["10.0.0.1/32"]}}},
    {"networkPolicy": {"usersFrom": [{"podselector": {}}]}},
    {"users": {"extraEnv": [{"name": "MESH_X", "valu": "1"}]}},
    {"metrics": {"serviceMonitor": {"enable": True}}},
]

WRONG_TYPES = [
    {"users": {"replicas": "3"}},
    {"users": {"port": "50051"}},
    {"users": {"drainDelaySeconds": "5s"}},
    {"jaeger": {"enabled": "yes"}},
    {"loadgen": {"resolver": "static"}},
    {"jaeger": {"maxTraces": 0}},
    {"auth": {"secret": "too-short"}},
    {"image": {"tag": "latest"}},
    {"image": {"reference": "registry.local/meshdemo:latest"}},
    {"postgresql": {"password": "has spaces and @"}},
    {"networkPolicy": {"apiServer": {"cidrs": "10.0.0.1/32"}}},
]


@pytest.mark.parametrize("values", MISSPELT, ids=[str(v) for v in MISSPELT])
def test_a_misspelt_key_fails_the_render(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="additional propert"):
        render_sources(values)


@pytest.mark.parametrize("values", WRONG_TYPES, ids=[str(v) for v in WRONG_TYPES])
def test_a_wrong_type_or_value_fails_the_render(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render_sources(values)


def test_the_schema_accepts_global() -> None:
    assert render_sources({"global": {"imageRegistry": "example"}})


def _object_schemas(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((path, node))
        for key, child in node.items():
            found.extend(_object_schemas(child, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_object_schemas(child, f"{path}/{index}"))
    return found


def test_every_object_in_the_schema_is_closed_a_map_or_a_named_kubernetes_object() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_objects = []
    for path, node in _object_schemas(schema):
        closed = node.get("additionalProperties") is False
        is_map = isinstance(node.get("additionalProperties"), dict) and "properties" not in node
        passthrough = node.get("$comment", "").startswith(("Kubernetes object", "Helm's own"))
        if not (closed or is_map or passthrough):
            open_objects.append(path)
    assert open_objects == []


def test_the_defaults_satisfy_the_schema() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.values)


# --- template-level failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"postgresql": {"enabled": False}}, "set externalDatabase.url or"),
        (
            {
                "postgresql": {"enabled": False},
                "externalDatabase": {"url": "postgresql://a@b/c", "existingSecret": "s"},
            },
            "not both",
        ),
        ({"externalDatabase": {"url": "postgresql://a@b/c"}}, "disable postgresql"),
    ],
)
def test_a_contradictory_store_choice_fails_with_a_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render_sources(values)


# --- images ------------------------------------------------------------------------------------


def test_image_defaults_to_the_app_version() -> None:
    rendered = render()
    assert container(rendered.get("Deployment", "meshdemo-users"), "users")["image"] == (
        "meshdemo:0.1.0"
    )


def test_image_reference_wins_over_repository_and_tag() -> None:
    ref = "registry.local/meshdemo:dev-abc123"
    rendered = render(
        {
            "image": {"repository": "x", "tag": "1", "reference": ref},
            "loadgen": {"enabled": True},
            "chaos": {"enabled": True},
        }
    )
    for kind, name, item in [
        ("Deployment", "meshdemo-users", "users"),
        ("Deployment", "meshdemo-loadgen", "loadgen"),
        ("CronJob", "meshdemo-chaos", "chaos"),
        ("Pod", "meshdemo-test", "test"),
    ]:
        assert container(rendered.get(kind, name), item)["image"] == ref


def test_image_repository_and_tag_are_used_without_a_reference() -> None:
    rendered = render({"image": {"repository": "ghcr.io/me/meshdemo", "tag": "0.2.0"}})
    image = container(rendered.get("Deployment", "meshdemo-users"), "users")["image"]
    assert image == "ghcr.io/me/meshdemo:0.2.0"


# --- secrets -----------------------------------------------------------------------------------


def _secret_value(rendered: Rendered, name: str, key: str) -> str:
    return base64.b64decode(rendered.get("Secret", name)["data"][key]).decode()


def test_the_generated_jwt_secret_is_long_and_kept(defaults: Rendered) -> None:
    secret = defaults.get("Secret", "meshdemo-auth")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(_secret_value(defaults, "meshdemo-auth", "jwt-secret").encode()) >= 48


def test_an_explicit_jwt_secret_is_used() -> None:
    value = "x" * 40
    rendered = render({"auth": {"secret": value}})
    assert _secret_value(rendered, "meshdemo-auth", "jwt-secret") == value


def test_an_existing_jwt_secret_is_referenced_and_none_is_made() -> None:
    rendered = render(SCENARIOS["existing-auth-secret"])
    assert not rendered.has("Secret", "meshdemo-auth")
    ref = next(
        e["valueFrom"]["secretKeyRef"]
        for e in container(rendered.get("Deployment", "meshdemo-users"), "users")["env"]
        if e["name"] == "MESH_AUTH_SECRET"
    )
    assert ref == {"name": "my-jwt", "key": "key"}


def test_the_secret_as_a_file_sets_the_file_variable_and_mounts_it() -> None:
    rendered = render({"auth": {"secretAsFile": True}})
    users = container(rendered.get("Deployment", "meshdemo-users"), "users")
    env = {e["name"]: e for e in users["env"]}
    assert "MESH_AUTH_SECRET" not in env
    assert env["MESH_AUTH_SECRET_FILE"]["value"] == "/etc/meshdemo/auth/jwt-secret"
    mounts = {m["mountPath"]: m for m in users["volumeMounts"]}
    assert mounts["/etc/meshdemo/auth"]["readOnly"] is True


def test_the_postgresql_secret_holds_a_store_url_with_its_password(defaults: Rendered) -> None:
    secret = defaults.get("Secret", "meshdemo-postgresql")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    password = _secret_value(defaults, "meshdemo-postgresql", "password")
    url = _secret_value(defaults, "meshdemo-postgresql", "url")
    assert len(password) >= 32
    assert url == f"postgresql://meshdemo:{password}@meshdemo-postgresql:5432/meshdemo"


def _store_ref(rendered: Rendered) -> dict[str, Any]:
    users = container(rendered.get("Deployment", "meshdemo-users"), "users")
    entry = next(e for e in users["env"] if e["name"] == "MESH_STORE")
    assert "value" not in entry, "the store URL carries a password: never in the pod spec"
    ref: dict[str, Any] = entry["valueFrom"]["secretKeyRef"]
    return ref


def test_the_store_url_comes_from_the_postgresql_secret(defaults: Rendered) -> None:
    assert _store_ref(defaults) == {"name": "meshdemo-postgresql", "key": "url"}


def test_an_external_database_url_goes_through_a_chart_secret() -> None:
    rendered = render(SCENARIOS["external-db-url"])
    assert _store_ref(rendered) == {"name": "meshdemo-database", "key": "url"}
    url = _secret_value(rendered, "meshdemo-database", "url")
    assert url == "postgresql://app:pw@db.example.internal:5432/users"
    assert not rendered.has("StatefulSet", "meshdemo-postgresql")


def test_an_external_database_secret_is_referenced_by_name_and_key() -> None:
    rendered = render(SCENARIOS["external-db-secret"])
    assert _store_ref(rendered) == {"name": "users-db", "key": "dsn"}
    assert not rendered.has("Secret", "meshdemo-database")
    assert not rendered.has("Secret", "meshdemo-postgresql")


# --- capabilities: ServiceMonitor ----------------------------------------------------------------


def test_a_service_monitor_needs_its_api_in_the_cluster() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    without = render(values)
    assert not without.of_kind("ServiceMonitor")
    users = without.get("Deployment", "meshdemo-users")
    annotations = users["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert "no ServiceMonitor API" in without.notes


def test_with_the_api_a_service_monitor_replaces_the_annotations() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    rendered = render(values, api_versions=[SERVICE_MONITOR_API])
    monitor = rendered.get("ServiceMonitor", "meshdemo-users")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    users = rendered.get("Deployment", "meshdemo-users")
    assert not any(
        key.startswith("prometheus.io/")
        for key in users["spec"]["template"]["metadata"]["annotations"]
    )


def test_metrics_off_turns_the_port_and_the_annotations_off() -> None:
    rendered = render(SCENARIOS["metrics-off"])
    users = rendered.get("Deployment", "meshdemo-users")
    assert rendered.get("ConfigMap", "meshdemo-users")["data"]["MESH_METRICS_PORT"] == "-1"
    assert [p["name"] for p in container(users, "users")["ports"]] == ["grpc"]
    assert "prometheus.io/scrape" not in users["spec"]["template"]["metadata"]["annotations"]


# --- NOTES.txt ---------------------------------------------------------------------------------


def test_notes_give_the_port_forwards_and_the_client_commands(defaults: Rendered) -> None:
    notes = defaults.notes
    assert "port-forward service/meshdemo-jaeger 16686:16686" in notes
    assert "port-forward service/meshdemo-users 50051:50051" in notes
    assert "python -m client token" in notes
    assert "python -m client create --target static:///127.0.0.1:50051" in notes
    assert "helm -n mesh test meshdemo" in notes


def test_notes_without_jaeger_say_tracing_is_off() -> None:
    notes = render(SCENARIOS["jaeger-off"]).notes
    assert "16686" not in notes
    assert "Tracing export is off" in notes


def test_notes_name_the_loadgen_logs_and_the_chaos_jobs() -> None:
    notes = render(SCENARIOS["everything-on"]).notes
    assert "logs -f deployment/meshdemo-loadgen -c loadgen" in notes
    assert "create job --from=cronjob/meshdemo-chaos" in notes


# --- the reference page ------------------------------------------------------------------------


def test_the_reference_page_names_every_values_key() -> None:
    doc = (CHART_DIR.parents[1] / "docs" / "helm-chart.md").read_text()
    with helm_python.Chart.load(CHART_DIR) as chart:
        values = chart.values
    missing: list[str] = []
    for key, value in values.items():
        children = value if isinstance(value, dict) else {}
        paths = [f"{key}.{child}" for child in children] or [key]
        missing.extend(path for path in paths if path not in doc)
    assert missing == [], f"not in docs/helm-chart.md: {missing}"
