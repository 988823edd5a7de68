"""TLS and mutual TLS in the chart (issue 9): values, mounts, variables, probes and objects.

Each certificate source (generated, an existing Secret, cert-manager with and without an
issuer) is a scenario of ``conftest.TLS_SCENARIOS``, so the matrix tests (strict lint at
1.30, kubernetes-validate for 1.30-1.34, the policies, the variable contract) cover them
too; this module checks what TLS itself must get right. The generated certificates are
decoded in ``test_chart_tls_certs.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import helm_python
import pytest

from service.config import ServiceConfig, load_config
from tests.deploy.conftest import (
    CHART_DIR,
    KUBE_VERSIONS,
    SCENARIOS,
    TLS_SCENARIOS,
    Rendered,
    container,
    effective_env,
    pod_spec,
    render,
    render_sources,
)

SERVER_DIR = "/etc/meshdemo/tls"
CA_DIR = "/etc/meshdemo/tls-ca"
CLIENT_DIR = "/etc/meshdemo/tls-client"
HEALTH_PORT = 50052
#: The server certificate's names for release meshdemo in namespace mesh.
EXPECTED_DNS_NAMES = [
    "meshdemo-users-headless",
    "meshdemo-users-headless.mesh",
    "meshdemo-users-headless.mesh.svc",
    "meshdemo-users-headless.mesh.svc.cluster.local",
    "meshdemo-users",
    "meshdemo-users.mesh",
    "meshdemo-users.mesh.svc",
    "meshdemo-users.mesh.svc.cluster.local",
    "*.meshdemo-users-headless.mesh.svc.cluster.local",
]
#: (kind, name, container) of every pod that dials the service, when enabled.
CLIENT_PODS = [
    ("Deployment", "meshdemo-loadgen", "loadgen"),
    ("Pod", "meshdemo-test", "test"),
]


def _tls(name: str) -> Rendered:
    return render(TLS_SCENARIOS[name])


def _users(rendered: Rendered) -> dict[str, Any]:
    return container(rendered.get("Deployment", "meshdemo-users"), "users")


def _volumes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(doc).get("volumes", [])}


def _mounts(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in item.get("volumeMounts", [])}


def _clients(rendered: Rendered) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (rendered.get(kind, name), container(rendered.get(kind, name), item))
        for kind, name, item in CLIENT_PODS
        if rendered.has(kind, name)
    ]


def _mutual(name: str) -> bool:
    return bool(TLS_SCENARIOS[name]["tls"].get("mutual"))


def _server_secret(name: str) -> str:
    return str(TLS_SCENARIOS[name]["tls"].get("existingSecret") or "meshdemo-tls")


def _client_secret(name: str) -> str:
    return str(TLS_SCENARIOS[name]["tls"].get("existingClientSecret") or "meshdemo-tls-client")


# --- off ---------------------------------------------------------------------------------------


def test_tls_is_off_by_default(defaults: Rendered) -> None:
    users = _users(defaults)
    env = effective_env(defaults, users)
    assert not [k for k in env if k.startswith("MESH_TLS_")]
    assert env["MESH_HEALTH_PORT"] == "-1"
    assert "health" not in {p["name"] for p in users["ports"]}
    assert not [m for m in _mounts(users) if m.startswith("/etc/meshdemo/tls")]
    assert not [s for s in defaults.of_kind("Secret") if "tls" in s["metadata"]["name"]]
    assert not defaults.of_kind("Certificate")
    assert "TLS is on" not in defaults.notes


def test_without_tls_the_clients_get_no_tls_variables_or_mounts() -> None:
    rendered = render({"loadgen": {"enabled": True}})
    for doc, item in _clients(rendered):
        assert not [k for k in effective_env(rendered, item) if k.startswith("MESH_TLS_")]
        assert set(_volumes(doc)) == {"tmp"}


# --- the service -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_the_service_serves_tls_from_the_mounted_secret_directory(name: str) -> None:
    rendered = _tls(name)
    users = _users(rendered)
    env = effective_env(rendered, users)
    assert env["MESH_TLS_CERT_FILE"] == f"{SERVER_DIR}/tls.crt"
    assert env["MESH_TLS_KEY_FILE"] == f"{SERVER_DIR}/tls.key"
    assert env.get("MESH_TLS_CLIENT_CA_FILE") == (f"{SERVER_DIR}/ca.crt" if _mutual(name) else None)
    mount = _mounts(users)[SERVER_DIR]
    # A subPath mount would never see a renewed Secret.
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volume = _volumes(rendered.get("Deployment", "meshdemo-users"))[mount["name"]]
    assert volume["secret"]["secretName"] == _server_secret(name)
    assert "items" not in volume["secret"], "the service needs tls.crt, tls.key and ca.crt"
    assert volume["secret"]["defaultMode"] == 0o440


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_the_service_accepts_the_tls_configuration(name: str) -> None:
    rendered = _tls(name)
    env = effective_env(rendered, _users(rendered))
    environ = {k: v for k, v in env.items() if k.startswith("MESH_") and isinstance(v, str)}
    config = load_config([], {**environ, "MESH_STORE": "postgresql://u@db:5432/d"})
    assert config.tls_cert_file and config.tls_key_file
    assert config.health_port == HEALTH_PORT
    assert bool(config.tls_client_ca_file) is _mutual(name)


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_with_tls_every_probe_uses_the_plain_health_port(name: str) -> None:
    rendered = _tls(name)
    users = _users(rendered)
    ports = {p["name"]: p["containerPort"] for p in users["ports"]}
    assert ports["health"] == HEALTH_PORT
    assert ports["grpc"] == 50051
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert users[probe]["grpc"]["port"] == HEALTH_PORT, probe
    assert effective_env(rendered, users)["MESH_HEALTH_PORT"] == str(HEALTH_PORT)


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_the_health_port_is_published_nowhere(name: str) -> None:
    # Only the kubelet probes it (node traffic, which NetworkPolicies do not govern).
    rendered = _tls(name)
    for service in rendered.of_kind("Service"):
        ports = service["spec"]["ports"]
        assert HEALTH_PORT not in {p["port"] for p in ports}, service["metadata"]["name"]
        assert "health" not in {p.get("targetPort") for p in ports}
    for policy in rendered.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert HEALTH_PORT not in {p.get("port") for p in rule.get("ports", [])}


def test_the_metrics_port_is_free_for_health_when_metrics_are_off() -> None:
    values = {
        "tls": {"enabled": True},
        "users": {"healthPort": 9464},
        "metrics": {"enabled": False},
    }
    assert _users(render(values))["readinessProbe"]["grpc"]["port"] == 9464


def test_a_custom_health_port_moves_the_probes_and_the_variable() -> None:
    rendered = render({"tls": {"enabled": True}, "users": {"healthPort": 8086}})
    users = _users(rendered)
    assert users["livenessProbe"]["grpc"]["port"] == 8086
    assert effective_env(rendered, users)["MESH_HEALTH_PORT"] == "8086"


# --- the clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_clients_trust_the_ca_and_present_a_certificate_with_mutual_tls(name: str) -> None:
    rendered = _tls(name)
    clients = _clients(rendered)
    assert clients, "the test pod always dials the service"
    for doc, item in clients:
        env = effective_env(rendered, item)
        where = doc["metadata"]["name"]
        assert env["MESH_TLS_CA_FILE"] == f"{CA_DIR}/ca.crt", where
        volumes = _volumes(doc)
        mounts = _mounts(item)
        ca = volumes[mounts[CA_DIR]["name"]]["secret"]
        assert mounts[CA_DIR]["readOnly"] is True
        # The clients see the server Secret's ca.crt only, never the server's key.
        assert ca == {
            "secretName": _server_secret(name),
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "defaultMode": 0o440,
        }
        if _mutual(name):
            assert env["MESH_TLS_CLIENT_CERT_FILE"] == f"{CLIENT_DIR}/tls.crt"
            assert env["MESH_TLS_CLIENT_KEY_FILE"] == f"{CLIENT_DIR}/tls.key"
            client = volumes[mounts[CLIENT_DIR]["name"]]["secret"]
            assert client["secretName"] == _client_secret(name)
            assert {i["path"] for i in client["items"]} == {"tls.crt", "tls.key"}
        else:
            assert "MESH_TLS_CLIENT_CERT_FILE" not in env
            assert CLIENT_DIR not in mounts


def test_the_chaos_job_never_dials_the_service_and_gets_no_certificate() -> None:
    rendered = _tls("generated-mutual")
    chaos = rendered.get("CronJob", "meshdemo-chaos")
    assert set(_volumes(chaos)) == {"tmp"}
    assert "MESH_TLS_CA_FILE" not in effective_env(rendered, container(chaos, "chaos"))


@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_every_client_target_host_is_a_name_of_the_server_certificate(name: str) -> None:
    # The client verifies the server against the host it dialled: k8s:/// and dns:/// both.
    rendered = _tls(name)
    for _, item in _clients(rendered):
        target = effective_env(rendered, item)["MESH_TARGET"]
        host = target.split(":///", 1)[1].rsplit(":", 1)[0]
        assert host in EXPECTED_DNS_NAMES, target


# --- where the certificates come from ----------------------------------------------------------


def test_generated_makes_a_kept_ca_server_and_client_secret() -> None:
    rendered = _tls("generated-mutual")
    for secret_name in ("meshdemo-tls-ca", "meshdemo-tls", "meshdemo-tls-client"):
        secret = rendered.get("Secret", secret_name)
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(rendered.get("Secret", "meshdemo-tls")["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert not rendered.of_kind("Certificate")
    assert not _tls("generated").has("Secret", "meshdemo-tls-client"), "only with mutual TLS"


@pytest.mark.parametrize("name", ["existing-secret", "existing-secret-mutual"])
def test_an_existing_secret_is_referenced_and_nothing_is_made(name: str) -> None:
    rendered = _tls(name)
    assert not [s for s in rendered.of_kind("Secret") if "tls" in s["metadata"]["name"]]
    assert not rendered.of_kind("Certificate")
    assert "the Secret users-tls" in rendered.notes


def _certificates(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c["spec"] for c in rendered.of_kind("Certificate")}


def test_cert_manager_without_an_issuer_makes_a_self_signed_ca_chain() -> None:
    rendered = _tls("cert-manager")
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.of_kind("Issuer")}
    assert issuers == {
        "meshdemo-selfsigned": {"selfSigned": {}},
        "meshdemo-ca": {"ca": {"secretName": "meshdemo-tls-ca"}},
    }
    certificates = _certificates(rendered)
    assert set(certificates) == {"meshdemo-tls-ca", "meshdemo-tls"}
    ca = certificates["meshdemo-tls-ca"]
    assert ca["isCA"] is True
    assert ca["secretName"] == "meshdemo-tls-ca"
    assert ca["issuerRef"] == {
        "name": "meshdemo-selfsigned",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    server = certificates["meshdemo-tls"]
    assert server["issuerRef"] == {
        "name": "meshdemo-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert server["dnsNames"] == EXPECTED_DNS_NAMES
    assert server["usages"] == ["digital signature", "server auth"]
    assert server["privateKey"]["rotationPolicy"] == "Always"
    assert (server["duration"], server["renewBefore"]) == ("2160h", "720h")
    assert not rendered.has("Secret", "meshdemo-tls"), "cert-manager writes the Secret"


def test_cert_manager_with_an_issuer_uses_it_for_server_and_client() -> None:
    rendered = _tls("cert-manager-issuer-mutual")
    assert not rendered.of_kind("Issuer")
    certificates = _certificates(rendered)
    assert set(certificates) == {"meshdemo-tls", "meshdemo-tls-client"}
    corp = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    for spec in certificates.values():
        assert spec["issuerRef"] == corp
    client = certificates["meshdemo-tls-client"]
    assert client["secretName"] == "meshdemo-tls-client"
    assert client["usages"] == ["digital signature", "client auth"]
    assert client["dnsNames"] == ["meshdemo-client"]
    assert "issued by corp-ca" in rendered.notes


#: The cert-manager.io/v1 fields the chart may use (kubernetes_validate has no CRD schemas).
CERTIFICATE_SPEC_FIELDS = frozenset(
    {
        "secretName",
        "secretTemplate",
        "commonName",
        "dnsNames",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
        "isCA",
    }
)
KEY_USAGES = frozenset(
    {"digital signature", "key encipherment", "cert sign", "server auth", "client auth"}
)


@pytest.mark.parametrize("name", ["cert-manager", "cert-manager-issuer-mutual"])
def test_cert_manager_objects_use_only_known_fields(name: str) -> None:
    rendered = _tls(name)
    for doc in [*rendered.of_kind("Certificate"), *rendered.of_kind("Issuer")]:
        assert doc["apiVersion"] == "cert-manager.io/v1"
        assert set(doc["metadata"]) == {"name", "labels"}
    for spec in _certificates(rendered).values():
        assert set(spec) <= CERTIFICATE_SPEC_FIELDS
        assert set(spec.get("usages", [])) <= KEY_USAGES
        assert set(spec["privateKey"]) <= {"algorithm", "size", "rotationPolicy"}
        assert set(spec["issuerRef"]) == {"name", "kind", "group"}


def test_extra_dns_names_are_added_once() -> None:
    values = {
        "tls": {
            "enabled": True,
            "certManager": {"enabled": True},
            "extraDnsNames": ["users.example.com", "meshdemo-users"],
        }
    }
    names = _certificates(render(values))["meshdemo-tls"]["dnsNames"]
    assert names == [*EXPECTED_DNS_NAMES, "users.example.com"]


def test_the_names_follow_release_namespace_and_cluster_domain() -> None:
    values = {
        "tls": {"enabled": True, "certManager": {"enabled": True}},
        "clusterDomain": "corp.internal",
    }
    rendered = render(values, name="demo", namespace="edge")
    names = _certificates(rendered)["demo-meshdemo-tls"]["dnsNames"]
    assert "demo-meshdemo-users-headless.edge.svc.corp.internal" in names
    assert "*.demo-meshdemo-users-headless.edge.svc.corp.internal" in names
    assert "demo-meshdemo-users.edge" in names


def test_notes_say_tls_is_on_and_how_to_trust_it() -> None:
    notes = _tls("generated-mutual").notes
    assert "TLS is on, mutual" in notes
    assert "health port 50052" in notes
    assert "MESH_TLS_SERVER_NAME=meshdemo-users.mesh.svc" in notes
    assert "get secret meshdemo-tls-client" in notes


def test_the_checksum_rolls_the_pods_when_tls_changes() -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = render(values).get("Deployment", "meshdemo-users")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    off = checksum({})
    assert checksum(TLS_SCENARIOS["generated"]) != off
    assert checksum(TLS_SCENARIOS["existing-secret"]) != checksum(
        {"tls": {"enabled": True, "existingSecret": "other"}}
    )


# --- lint and refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(TLS_SCENARIOS))
def test_lint_strict_finds_nothing_for_each_tls_mode(name: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR, TLS_SCENARIOS[name], strict=True, kube_version=f"v{kube_version}"
    )
    assert (report["errors"], report["messages"]) == ([], [])


SCHEMA_REFUSES = [
    {"tls": {"mutual": True}},
    {"tls": {"enabled": "yes"}},
    {"tls": {"existingSecret": "Not_A_Name"}},
    {"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}},
    {"tls": {"certManager": {"duration": "90 days"}}},
    {"tls": {"generated": {"validityDays": 0}}},
    {"tls": {"extraDnsNames": ["Upper.Example.com"]}},
    {"tls": {"extraDnsNames": "users.example.com"}},
    {"tls": {"existingSecrets": "x"}},
    {"tls": {"certManager": {"issuer": {"name": "x"}}}},
    {"users": {"healthPort": 0}},
    {"users": {"admission": {"maxChatStream": 10}}},
    {"users": {"admission": {"maxChatStreams": 0}}},
    {"users": {"admission": {"maxUnaryRpcs": "800"}}},
    {"users": {"admission": {"handshakeTimeoutSeconds": 0}}},
    {"users": {"admission": {"chatIdleTimeoutSeconds": -1}}},
    {"users": {"admission": {"maxConnections": -1}}},
    {"users": {"admission": {"defaultCallTimeoutSeconds": 0}}},
    {"users": {"admission": {"defaultStreamTimeoutSeconds": -5}}},
]


@pytest.mark.parametrize("values", SCHEMA_REFUSES, ids=[str(v) for v in SCHEMA_REFUSES])
def test_the_schema_refuses_bad_tls_and_admission_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render_sources(values)


def test_mutual_tls_without_tls_is_refused_by_the_schema() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/tls/enabled"):
        render_sources({"tls": {"mutual": True}})


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"existingSecret": "a", "certManager": {"enabled": True}}, "not both"),
        ({"mutual": True, "existingSecret": "a"}, "needs tls.existingClientSecret"),
        ({"existingClientSecret": "b"}, "needs tls.existingSecret"),
    ],
)
def test_a_contradictory_tls_choice_fails_with_a_message(tls: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render_sources({"tls": {"enabled": True, **tls}})


@pytest.mark.parametrize("users", [{"healthPort": 50051}, {"healthPort": 9464}])
def test_a_health_port_clash_fails_with_a_message(users: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"healthPort .* is already"):
        render_sources({"tls": {"enabled": True}, "users": users})


# --- admission ---------------------------------------------------------------------------------

#: users.admission key -> the service's variable.
ADMISSION = {
    "maxChatStreams": "MESH_MAX_CHAT_STREAMS",
    "maxListStreams": "MESH_MAX_LIST_STREAMS",
    "maxUnaryRpcs": "MESH_MAX_UNARY_RPCS",
    "maxStreamsPerPrincipal": "MESH_MAX_STREAMS_PER_PRINCIPAL",
    "chatIdleTimeoutSeconds": "MESH_CHAT_IDLE_TIMEOUT",
    "handshakeTimeoutSeconds": "MESH_HANDSHAKE_TIMEOUT",
    "maxConnectionIdleSeconds": "MESH_MAX_CONNECTION_IDLE",
    "maxStreamsPerConnection": "MESH_MAX_STREAMS_PER_CONNECTION",
    "maxConnections": "MESH_MAX_CONNECTIONS",
    "defaultCallTimeoutSeconds": "MESH_DEFAULT_CALL_TIMEOUT",
    "defaultStreamTimeoutSeconds": "MESH_DEFAULT_STREAM_TIMEOUT",
}
_FIELDS = {f.metadata["env"]: f for f in dataclasses.fields(ServiceConfig)}


def _rendered_config(rendered: Rendered) -> ServiceConfig:
    env = effective_env(rendered, _users(rendered))
    environ = {k: v for k, v in env.items() if k.startswith("MESH_") and isinstance(v, str)}
    return load_config([], {**environ, "MESH_STORE": "postgresql://u@db:5432/d"})


def test_admission_keys_are_the_values_and_map_to_service_settings() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        assert set(chart.values["users"]["admission"]) == set(ADMISSION)
    assert set(ADMISSION.values()) <= set(_FIELDS)


def test_admission_defaults_are_the_service_defaults(defaults: Rendered) -> None:
    config = _rendered_config(defaults)
    env = effective_env(defaults, _users(defaults))
    for variable in ADMISSION.values():
        field = _FIELDS[variable]
        assert variable in env, f"the chart does not set {variable}"
        assert getattr(config, field.name) == field.default, variable


def test_admission_values_reach_the_service() -> None:
    values = SCENARIOS["admission"]["users"]["admission"]
    config = _rendered_config(render(SCENARIOS["admission"]))
    for key, variable in ADMISSION.items():
        assert getattr(config, _FIELDS[variable].name) == values[key], key
    assert config.chat_idle_timeout == 0.0
