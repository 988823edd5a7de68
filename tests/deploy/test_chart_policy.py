"""Policies a platform engineer checks in review, on every scenario's rendered output."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from tests.deploy.conftest import (
    LONG_RUNNING_KINDS,
    SCENARIOS,
    Rendered,
    container,
    effective_env,
    iter_containers,
    pod_labels,
    pod_spec,
    render,
    workloads,
)

PROBES = ("readinessProbe", "livenessProbe")


def _where(doc: dict[str, Any], item: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}:{item['name']}"


# --- security context --------------------------------------------------------------------------


def test_every_pod_runs_as_non_root_with_seccomp(scenario: Rendered) -> None:
    for doc in workloads(scenario):
        context = pod_spec(doc)["securityContext"]
        assert context["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert isinstance(context["runAsUser"], int)
        assert context["runAsUser"] > 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_container_is_locked_down(scenario: Rendered) -> None:
    problems = []
    for doc, item in iter_containers(scenario):
        context = item.get("securityContext", {})
        expected = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        wrong = {k: context.get(k) for k, v in expected.items() if context.get(k) != v}
        if wrong or not isinstance(context.get("runAsUser"), int):
            problems.append(f"{_where(doc, item)}: {wrong or context}")
    assert problems == []


def test_the_project_image_runs_as_its_numeric_user(scenario: Rendered) -> None:
    for doc, item in iter_containers(scenario):
        if item["image"].startswith("meshdemo:"):
            assert item["securityContext"]["runAsUser"] == 10001, _where(doc, item)


#: Volume types the Pod Security Standard "restricted" allows.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def test_every_pod_meets_the_restricted_pod_security_standard(scenario: Rendered) -> None:
    for doc in workloads(scenario):
        spec = pod_spec(doc)
        name = doc["metadata"]["name"]
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{name}: {volume}"
        for item in spec["containers"]:
            assert not any("hostPort" in p for p in item.get("ports", [])), name
            assert item["securityContext"].get("privileged", False) is False, name


def test_a_read_only_root_gets_a_writable_tmp(scenario: Rendered) -> None:
    for doc, item in iter_containers(scenario):
        spec = pod_spec(doc)
        mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts", [])}
        assert "/tmp" in mounts, _where(doc, item)
        volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
        assert "emptyDir" in volume


def test_only_api_clients_mount_a_service_account_token(scenario: Rendered) -> None:
    for doc in workloads(scenario):
        component = pod_labels(doc)["app.kubernetes.io/component"]
        spec = pod_spec(doc)
        targets = {effective_env(scenario, c).get("MESH_TARGET", "") for c in spec["containers"]}
        k8s_resolver = any(t.startswith("k8s:///") for t in targets)
        wants_token = component == "chaos" or (component == "loadgen" and k8s_resolver)
        assert spec["automountServiceAccountToken"] is wants_token, doc["metadata"]["name"]


def test_the_users_service_account_mounts_no_token(scenario: Rendered) -> None:
    account = scenario.get("ServiceAccount", "meshdemo-users")
    assert account["automountServiceAccountToken"] is False


# --- probes and resources ----------------------------------------------------------------------


def test_every_long_running_container_has_probes(scenario: Rendered) -> None:
    missing = [
        f"{_where(doc, item)} lacks {probe}"
        for doc, item in iter_containers(scenario)
        if doc["kind"] in LONG_RUNNING_KINDS
        for probe in PROBES
        if probe not in item
    ]
    assert missing == []


def test_every_container_has_requests_and_a_memory_limit(scenario: Rendered) -> None:
    for doc, item in iter_containers(scenario):
        resources = item["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), _where(doc, item)
        assert "memory" in resources["limits"], _where(doc, item)


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


def test_the_users_memory_covers_the_measured_peak(defaults: Rendered) -> None:
    # docs/PERFORMANCE.md: 48.4 MiB idle, 81.2 MiB with 1,000 open Chat streams.
    users = container(defaults.get("Deployment", "meshdemo-users"), "users")
    assert _mebibytes(users["resources"]["requests"]["memory"]) >= 81.2
    assert _mebibytes(users["resources"]["limits"]["memory"]) >= 2 * 81.2


def test_the_users_probes_are_grpc_on_the_service_port(scenario: Rendered) -> None:
    # With TLS the probes use the plain-text health port: the kubelet cannot speak TLS.
    users = container(scenario.get("Deployment", "meshdemo-users"), "users")
    env = effective_env(scenario, users)
    ports = {p["name"]: p["containerPort"] for p in users["ports"]}
    assert ports["grpc"] == int(env["MESH_PORT"])
    tls = "MESH_TLS_CERT_FILE" in env
    port = int(env["MESH_HEALTH_PORT"] if tls else env["MESH_PORT"])
    assert ports.get("health") == (port if tls else None)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = users[probe]["grpc"]
        assert isinstance(grpc["port"], int), "a grpc probe port must be a number"
        assert grpc["port"] == port
    assert users["readinessProbe"]["grpc"]["service"] == "meshdemo.v1.UserService"
    assert users["startupProbe"]["grpc"]["service"] == "meshdemo.v1.UserService"


def test_a_custom_port_moves_everything_together() -> None:
    rendered = render({"users": {"port": 6000}, "loadgen": {"enabled": True}})
    users = container(rendered.get("Deployment", "meshdemo-users"), "users")
    assert effective_env(rendered, users)["MESH_PORT"] == "6000"
    assert {p["containerPort"] for p in users["ports"] if p["name"] == "grpc"} == {6000}
    assert users["readinessProbe"]["grpc"]["port"] == 6000
    headless = rendered.get("Service", "meshdemo-users-headless")
    assert headless["spec"]["ports"][0]["port"] == 6000
    assert headless["spec"]["ports"][0]["targetPort"] == 6000
    loadgen = container(rendered.get("Deployment", "meshdemo-loadgen"), "loadgen")
    assert effective_env(rendered, loadgen)["MESH_TARGET"].endswith(":6000")


def test_the_service_binds_every_address_in_the_pod(scenario: Rendered) -> None:
    users = container(scenario.get("Deployment", "meshdemo-users"), "users")
    assert effective_env(scenario, users)["MESH_HOST"] == "0.0.0.0"


def test_jaeger_and_postgresql_probe_their_health_endpoints(defaults: Rendered) -> None:
    jaeger = container(defaults.get("Deployment", "meshdemo-jaeger"), "jaeger")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert jaeger[probe]["httpGet"] == {"path": "/status", "port": 13133}
    postgres = container(defaults.get("StatefulSet", "meshdemo-postgresql"), "postgresql")
    assert postgres["readinessProbe"]["exec"]["command"][0] == "pg_isready"


# --- shutdown ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "users",
    [
        {},
        {"preStopSeconds": 0, "drainDelaySeconds": 0, "shutdownGraceSeconds": 0},
        {"preStopSeconds": 7, "drainDelaySeconds": 2.5, "shutdownGraceSeconds": 30.2},
    ],
)
def test_the_grace_period_covers_prestop_drain_and_shutdown(users: dict[str, Any]) -> None:
    rendered = render({"users": users})
    deployment = rendered.get("Deployment", "meshdemo-users")
    item = container(deployment, "users")
    env = effective_env(rendered, item)
    pre_stop = item["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + float(env["MESH_DRAIN_DELAY"]) + float(env["MESH_SHUTDOWN_GRACE"])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= math.ceil(needed) + 1, "a margin beyond the protocol's own time"
    assert pre_stop == users.get("preStopSeconds", 5)


def test_rollouts_never_lower_capacity(defaults: Rendered) -> None:
    strategy = defaults.get("Deployment", "meshdemo-users")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- Services and selection --------------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_headless_service_selects_exactly_the_users_pods(scenario: Rendered) -> None:
    headless = scenario.get("Service", "meshdemo-users-headless")
    spec = headless["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is False
    selected = {
        doc["metadata"]["name"]
        for doc in workloads(scenario)
        if _selects(spec["selector"], pod_labels(doc))
    }
    assert selected == {"meshdemo-users"}


def test_selectors_use_only_name_instance_and_component(scenario: Rendered) -> None:
    allowed = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    for doc in scenario.docs:
        spec = doc.get("spec", {})
        selector = spec.get("selector")
        if doc["kind"] == "Service":
            assert set(selector) == allowed, doc["metadata"]["name"]
        elif isinstance(selector, dict) and "matchLabels" in selector:
            assert set(selector["matchLabels"]) == allowed, doc["metadata"]["name"]


def test_the_clusterip_service_reaches_the_same_pods(defaults: Rendered) -> None:
    service = defaults.get("Service", "meshdemo-users")
    headless = defaults.get("Service", "meshdemo-users-headless")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == headless["spec"]["selector"]
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_the_pods_spread_over_nodes(scenario: Rendered) -> None:
    spec = pod_spec(scenario.get("Deployment", "meshdemo-users"))
    (constraint,) = spec["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert (
        constraint["labelSelector"]["matchLabels"]
        == (scenario.get("Service", "meshdemo-users-headless")["spec"]["selector"])
    )


# --- images ------------------------------------------------------------------------------------


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_every_image_is_pinned(scenario: Rendered) -> None:
    unpinned = [
        f"{_where(doc, item)}: {item['image']}"
        for doc, item in iter_containers(scenario)
        if not _pinned(item["image"])
    ]
    assert unpinned == []


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("meshdemo:0.1.0", True),
        ("registry:5000/meshdemo", False),
        ("meshdemo:latest", False),
        ("meshdemo", False),
        ("meshdemo@sha256:" + "a" * 64, True),
    ],
)
def test_the_pin_check_itself(image: str, pinned: bool) -> None:
    assert _pinned(image) is pinned


def test_jaeger_is_a_v2_release(defaults: Rendered) -> None:
    image = container(defaults.get("Deployment", "meshdemo-jaeger"), "jaeger")["image"]
    repository, tag = image.split(":")
    assert repository == "jaegertracing/jaeger"
    assert re.fullmatch(r"2\.\d+\.\d+", tag)


# --- Jaeger wiring -----------------------------------------------------------------------------


def test_jaeger_keeps_traces_in_memory_and_serves_otlp_and_the_ui(defaults: Rendered) -> None:
    import yaml

    config = yaml.safe_load(defaults.get("ConfigMap", "meshdemo-jaeger")["data"]["config.yaml"])
    extensions = config["extensions"]
    (backend,) = extensions["jaeger_storage"]["backends"].values()
    assert backend["memory"]["max_traces"] > 0
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert extensions["jaeger_query"]["http"]["endpoint"] == "0.0.0.0:16686"
    assert extensions["healthcheckv2"]["http"]["endpoint"] == "0.0.0.0:13133"
    service_ports = {p["port"] for p in defaults.get("Service", "meshdemo-jaeger")["spec"]["ports"]}
    assert service_ports == {4317, 16686}


def test_service_and_clients_export_to_jaeger() -> None:
    rendered = render({"loadgen": {"enabled": True}})
    for kind, name, item, service in [
        ("Deployment", "meshdemo-users", "users", "meshdemo-user-service"),
        ("Deployment", "meshdemo-loadgen", "loadgen", "meshdemo-loadgen"),
    ]:
        env = effective_env(rendered, container(rendered.get(kind, name), item))
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://meshdemo-jaeger:4317"
        assert env["OTEL_SERVICE_NAME"] == service
        assert "k8s.pod.name=$(K8S_POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_with_jaeger_off_nothing_points_at_it() -> None:
    rendered = render({**SCENARIOS["jaeger-off"], "loadgen": {"enabled": True}})
    assert "jaeger" not in rendered.text().lower()
    assert "4317" not in rendered.text()
    for _, item in iter_containers(rendered):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in effective_env(rendered, item)


def test_an_explicit_collector_is_used_with_jaeger_off() -> None:
    endpoint = "http://otel-collector.observability:4317"
    rendered = render({"jaeger": {"enabled": False}, "tracing": {"otlpEndpoint": endpoint}})
    users = container(rendered.get("Deployment", "meshdemo-users"), "users")
    assert effective_env(rendered, users)["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    policy = rendered.get("NetworkPolicy", "meshdemo-otlp-egress")
    assert policy["spec"]["egress"] == [{"ports": [{"protocol": "TCP", "port": 4317}]}]


# --- PodDisruptionBudget and checksum ----------------------------------------------------------


@pytest.mark.parametrize(("replicas", "has_pdb"), [(1, False), (2, True), (3, True), (5, True)])
def test_the_pdb_exists_only_with_more_than_one_replica(replicas: int, has_pdb: bool) -> None:
    rendered = render({"users": {"replicas": replicas}})
    assert rendered.has("PodDisruptionBudget", "meshdemo-users") is has_pdb
    if has_pdb:
        spec = rendered.get("PodDisruptionBudget", "meshdemo-users")["spec"]
        assert spec == {
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {
                "matchLabels": rendered.get("Service", "meshdemo-users-headless")["spec"][
                    "selector"
                ]
            },
        }


def _checksum(values: dict[str, Any]) -> str:
    deployment = render(values).get("Deployment", "meshdemo-users")
    checksum: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return checksum


def test_the_checksum_is_stable_for_the_same_values() -> None:
    # Two independent renders: generated secrets differ, the checksum must not.
    from tests.deploy.conftest import parse, render_sources

    first = parse(render_sources()).get("Deployment", "meshdemo-users")
    second = parse(render_sources()).get("Deployment", "meshdemo-users")
    key = "checksum/config"
    assert (
        first["spec"]["template"]["metadata"]["annotations"][key]
        == second["spec"]["template"]["metadata"]["annotations"][key]
    )


@pytest.mark.parametrize(
    "change",
    [
        {"users": {"logLevel": "DEBUG"}},
        {"users": {"drainDelaySeconds": 6}},
        {"users": {"maxConnectionAgeSeconds": 120}},
        {"auth": {"secret": "y" * 40}},
        {"auth": {"existingSecret": "other"}},
        {"postgresql": {"password": "another-password"}},
    ],
)
def test_the_checksum_changes_when_config_or_secret_inputs_change(change: dict[str, Any]) -> None:
    assert _checksum(change) != _checksum({})


# --- RBAC --------------------------------------------------------------------------------------


def _rules(rendered: Rendered, name: str) -> list[tuple[str, str, tuple[str, ...]]]:
    role = rendered.get("Role", name)
    return sorted(
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


def test_the_loadgen_role_only_reads_endpointslices() -> None:
    rendered = render(SCENARIOS["loadgen-k8s"])
    assert _rules(rendered, "meshdemo-loadgen") == [
        ("discovery.k8s.io", "endpointslices", ("get", "list", "watch"))
    ]
    binding = rendered.get("RoleBinding", "meshdemo-loadgen")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "meshdemo-loadgen", "namespace": "mesh"}
    ]
    assert binding["roleRef"]["name"] == "meshdemo-loadgen"


def test_the_dns_loadgen_has_no_role_and_no_token() -> None:
    rendered = render(SCENARIOS["loadgen-dns"])
    assert not rendered.of_kind("Role")
    assert rendered.get("ServiceAccount", "meshdemo-loadgen")["automountServiceAccountToken"] is (
        False
    )
    env = effective_env(
        rendered, container(rendered.get("Deployment", "meshdemo-loadgen"), "loadgen")
    )
    assert env["MESH_TARGET"] == "dns:///meshdemo-users-headless.mesh.svc.cluster.local:50051"


def test_the_k8s_loadgen_targets_the_headless_service() -> None:
    rendered = render(SCENARIOS["loadgen-k8s"])
    env = effective_env(
        rendered, container(rendered.get("Deployment", "meshdemo-loadgen"), "loadgen")
    )
    assert env["MESH_TARGET"] == "k8s:///meshdemo-users-headless.mesh:50051"
    assert env["LOAD_POLICY"] == "least_conn"


def test_the_chaos_role_lists_deletes_and_evicts_pods_only() -> None:
    rendered = render(SCENARIOS["chaos"])
    assert _rules(rendered, "meshdemo-chaos") == [
        ("", "pods", ("delete", "list")),
        ("", "pods/eviction", ("create",)),
    ]


def test_no_cluster_wide_rbac(scenario: Rendered) -> None:
    assert not scenario.of_kind("ClusterRole")
    assert not scenario.of_kind("ClusterRoleBinding")


# --- chaos -------------------------------------------------------------------------------------


def test_chaos_kills_one_users_pod_per_run_without_overlap() -> None:
    cron = render(SCENARIOS["chaos"]).get("CronJob", "meshdemo-chaos")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "*/2 * * * *"
    command = container(cron, "chaos")["command"]
    assert command == [
        "python",
        "-m",
        "client",
        "chaos",
        "--namespace",
        "mesh",
        "--selector",
        "app.kubernetes.io/instance=meshdemo,app.kubernetes.io/component=users",
        "--count",
        "1",
    ]


def test_chaos_flags_follow_the_values() -> None:
    cron = render(SCENARIOS["chaos-force-evict"]).get("CronJob", "meshdemo-chaos")
    command = container(cron, "chaos")["command"]
    assert command[-6:] == ["--count", "2", "--interval", "5", "--force", "--evict"]


# --- NetworkPolicies ---------------------------------------------------------------------------


def _policies(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in rendered.of_kind("NetworkPolicy")}


def test_network_policies_deny_by_default(defaults: Rendered) -> None:
    deny = _policies(defaults)["meshdemo-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    selector = deny["podSelector"]["matchLabels"]
    for doc in workloads(defaults):
        assert _selects(selector, pod_labels(doc)), doc["metadata"]["name"]


def test_network_policies_allow_dns_clients_store_and_otlp(defaults: Rendered) -> None:
    policies = _policies(defaults)
    dns_ports = {(p["protocol"], p["port"]) for p in policies["meshdemo-dns"]["egress"][0]["ports"]}
    assert dns_ports == {("UDP", 53), ("TCP", 53)}
    users = policies["meshdemo-users"]
    clients = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in users["ingress"][0]["from"]
    }
    assert clients == {"loadgen", "test"}
    assert users["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 50051}]
    assert users["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 9464}]
    assert users["egress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert policies["meshdemo-postgresql"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 5432}
    ]
    assert policies["meshdemo-otlp-egress"]["egress"][0]["ports"] == [
        {"protocol": "TCP", "port": 4317}
    ]
    assert len(policies["meshdemo-jaeger"]["ingress"]) == 1, "no UI ingress unless asked"


def test_the_api_server_is_reachable_only_by_its_clients() -> None:
    policies = _policies(render(SCENARIOS["everything-on"]))
    for component in ("loadgen", "chaos"):
        egress = policies[f"meshdemo-{component}-apiserver"]["egress"][0]
        assert {p["port"] for p in egress["ports"]} == {443, 6443}
        assert [peer["ipBlock"]["cidr"] for peer in egress["to"]] == [
            "10.96.0.1/32",
            "172.16.0.0/12",
        ]
    assert "meshdemo-users-apiserver" not in policies
    assert "meshdemo-loadgen-apiserver" not in _policies(render(SCENARIOS["loadgen-dns"]))


def test_the_jaeger_ui_and_extra_clients_can_be_allowed() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    policies = _policies(render({"networkPolicy": {"jaegerUIFrom": [peer], "usersFrom": [peer]}}))
    assert policies["meshdemo-jaeger"]["ingress"][1] == {
        "from": [peer],
        "ports": [{"protocol": "TCP", "port": 16686}],
    }
    assert peer in policies["meshdemo-users"]["ingress"][0]["from"]


def test_a_node_port_publishes_the_jaeger_ui_on_a_fixed_port() -> None:
    rendered = render(SCENARIOS["jaeger-nodeport"])
    service = rendered.get("Service", "meshdemo-jaeger")["spec"]
    assert service["type"] == "NodePort"
    ui = next(p for p in service["ports"] if p["name"] == "ui")
    assert ui["nodePort"] == 30686
    ingress = _policies(rendered)["meshdemo-jaeger"]["ingress"]
    assert ingress[1] == {"ports": [{"protocol": "TCP", "port": 16686}]}
    assert "port 30686 of every node" in rendered.notes


def test_a_cluster_ip_jaeger_has_no_node_port(defaults: Rendered) -> None:
    service = defaults.get("Service", "meshdemo-jaeger")["spec"]
    assert service["type"] == "ClusterIP"
    assert all("nodePort" not in p for p in service["ports"])


def test_an_external_database_is_reachable_on_its_port() -> None:
    policies = _policies(render(SCENARIOS["external-db-url"]))
    assert policies["meshdemo-users"]["egress"] == [{"ports": [{"protocol": "TCP", "port": 5432}]}]
    assert "meshdemo-postgresql" not in policies


def test_network_policies_off_renders_none() -> None:
    assert not render(SCENARIOS["network-policies-off"]).of_kind("NetworkPolicy")


def test_metrics_ingress_follows_metrics() -> None:
    users = _policies(render(SCENARIOS["metrics-off"]))["meshdemo-users"]
    assert len(users["ingress"]) == 1
