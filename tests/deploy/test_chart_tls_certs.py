"""The chart-generated development CA and certificates, decoded and verified for real.

``cryptography``'s X.509 verifier (the same path rules as a TLS client: chain, validity,
names, key usage) checks that the server certificate verifies for every name a client of
the chart dials, and the client certificate as a client. Upgrades render against the fake
Kubernetes API of ``test_chart_upgrade.py``: the CA and certificates are kept, and issued
anew from the same CA when their names change or their renewal time has passed.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.conftest import TLS_SCENARIOS, Rendered, parse, render, render_sources
from tests.deploy.test_chart_tls import EXPECTED_DNS_NAMES
from tests.deploy.test_chart_upgrade import FakeSecretsApi, render_against

x509 = pytest.importorskip("cryptography.x509")
verification = pytest.importorskip("cryptography.x509.verification")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")

MUTUAL = TLS_SCENARIOS["generated-mutual"]


def _cert(rendered: Rendered, secret: str, key: str = "tls.crt") -> Any:
    data = base64.b64decode(rendered.get("Secret", secret)["data"][key])
    return x509.load_pem_x509_certificate(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _server_verifier(ca: Any, host: str) -> Any:
    store = verification.Store([ca])
    builder = verification.PolicyBuilder().store(store).time(_now())
    return builder.build_server_verifier(x509.DNSName(host))


@pytest.fixture(scope="module")
def mutual() -> Rendered:
    return render(MUTUAL)


def test_the_ca_is_a_ca_and_lives_its_validity(mutual: Rendered) -> None:
    ca = _cert(mutual, "meshdemo-tls-ca")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert abs(lifetime.days - 3650) <= 1


def test_the_server_secret_carries_the_ca_as_ca_crt(mutual: Rendered) -> None:
    assert _cert(mutual, "meshdemo-tls", "ca.crt") == _cert(mutual, "meshdemo-tls-ca")
    assert _cert(mutual, "meshdemo-tls-client", "ca.crt") == _cert(mutual, "meshdemo-tls-ca")


def test_the_server_certificate_has_exactly_the_service_names(mutual: Rendered) -> None:
    server = _cert(mutual, "meshdemo-tls")
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == EXPECTED_DNS_NAMES
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert abs(lifetime.days - 365) <= 1


@pytest.mark.parametrize(
    "host",
    [
        "meshdemo-users-headless.mesh",  # the k8s:/// target's host
        "meshdemo-users-headless.mesh.svc.cluster.local",  # the dns:/// target's host
        "meshdemo-users.mesh.svc",  # what NOTES.txt tells a port-forward to verify
        "10-244-1-7.meshdemo-users-headless.mesh.svc.cluster.local",  # a pod's record
    ],
)
def test_the_server_certificate_verifies_for_the_names_clients_dial(
    mutual: Rendered, host: str
) -> None:
    ca = _cert(mutual, "meshdemo-tls-ca")
    chain = _server_verifier(ca, host).verify(_cert(mutual, "meshdemo-tls"), [])
    assert chain[-1] == ca


@pytest.mark.parametrize("host", ["meshdemo-users.other", "evil.example.com"])
def test_the_server_certificate_does_not_verify_for_other_names(
    mutual: Rendered, host: str
) -> None:
    ca = _cert(mutual, "meshdemo-tls-ca")
    with pytest.raises(verification.VerificationError):
        _server_verifier(ca, host).verify(_cert(mutual, "meshdemo-tls"), [])


def test_the_client_certificate_verifies_as_a_client_of_the_ca(mutual: Rendered) -> None:
    ca = _cert(mutual, "meshdemo-tls-ca")
    builder = verification.PolicyBuilder().store(verification.Store([ca])).time(_now())
    verified = builder.build_client_verifier().verify(_cert(mutual, "meshdemo-tls-client"), [])
    assert verified.chain[-1] == ca


def test_the_client_certificate_is_named_for_the_release(mutual: Rendered) -> None:
    client = _cert(mutual, "meshdemo-tls-client")
    names = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["meshdemo-client"]
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_a_certificate_from_another_ca_does_not_verify(mutual: Rendered) -> None:
    other = parse(render_sources(MUTUAL))  # a second install, not the cached render
    ca = _cert(other, "meshdemo-tls-ca")
    assert ca != _cert(mutual, "meshdemo-tls-ca"), "every install has its own CA"
    with pytest.raises(verification.VerificationError):
        _server_verifier(ca, "meshdemo-users.mesh").verify(_cert(mutual, "meshdemo-tls"), [])


@pytest.mark.parametrize("secret", ["meshdemo-tls", "meshdemo-tls-client", "meshdemo-tls-ca"])
def test_each_key_belongs_to_its_certificate(mutual: Rendered, secret: str) -> None:
    data = base64.b64decode(mutual.get("Secret", secret)["data"]["tls.key"])
    key = serialization.load_pem_private_key(data, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    assert key.public_key().public_bytes(encoding, public) == (
        _cert(mutual, secret).public_key().public_bytes(encoding, public)
    )


# --- upgrades ----------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeSecretsApi]:
    fake = FakeSecretsApi()
    fake.start()
    try:
        yield fake
    finally:
        fake.close()


def _install(api: FakeSecretsApi, values: dict[str, Any]) -> Rendered:
    installed = render_against(api, values, upgrade=False)
    for secret in installed.of_kind("Secret"):
        api.store(secret)
    return installed


def _pem(rendered: Rendered, secret: str) -> tuple[str, str]:
    data = rendered.get("Secret", secret)["data"]
    return data["tls.crt"], data["tls.key"]


def test_an_upgrade_keeps_the_generated_ca_and_certificates(api: FakeSecretsApi) -> None:
    installed = _install(api, MUTUAL)
    upgraded = render_against(api, MUTUAL, upgrade=True)
    for secret in ("meshdemo-tls-ca", "meshdemo-tls", "meshdemo-tls-client"):
        assert _pem(upgraded, secret) == _pem(installed, secret), secret
    asked = {path.split("?")[0] for path in api.requests}
    assert "/api/v1/namespaces/mesh/secrets/meshdemo-tls-ca" in asked


def test_new_names_reissue_the_server_certificate_from_the_same_ca(api: FakeSecretsApi) -> None:
    installed = _install(api, MUTUAL)
    values = {**MUTUAL, "tls": {**MUTUAL["tls"], "extraDnsNames": ["users.example.com"]}}
    upgraded = render_against(api, values, upgrade=True)
    assert _pem(upgraded, "meshdemo-tls-ca") == _pem(installed, "meshdemo-tls-ca")
    assert _pem(upgraded, "meshdemo-tls-client") == _pem(installed, "meshdemo-tls-client")
    assert _pem(upgraded, "meshdemo-tls") != _pem(installed, "meshdemo-tls")
    ca = _cert(installed, "meshdemo-tls-ca")
    _server_verifier(ca, "users.example.com").verify(_cert(upgraded, "meshdemo-tls"), [])


def test_an_upgrade_after_the_renewal_time_reissues_both_certificates(
    api: FakeSecretsApi,
) -> None:
    installed = _install(api, MUTUAL)
    assert (
        int(
            installed.get("Secret", "meshdemo-tls")["metadata"]["annotations"][
                "meshdemo.dev/renew-after"
            ]
        )
        > _now().timestamp() + 200 * 86400
    ), "two thirds of 365 days from now"
    for name in ("meshdemo-tls", "meshdemo-tls-client"):
        api.secrets[("mesh", name)]["metadata"]["annotations"]["meshdemo.dev/renew-after"] = "1"
    upgraded = render_against(api, MUTUAL, upgrade=True)
    assert _pem(upgraded, "meshdemo-tls-ca") == _pem(installed, "meshdemo-tls-ca")
    for name in ("meshdemo-tls", "meshdemo-tls-client"):
        assert _pem(upgraded, name) != _pem(installed, name), name
    ca = _cert(installed, "meshdemo-tls-ca")
    _server_verifier(ca, "meshdemo-users.mesh").verify(_cert(upgraded, "meshdemo-tls"), [])


def test_a_lost_ca_reissues_everything(api: FakeSecretsApi) -> None:
    installed = _install(api, MUTUAL)
    del api.secrets[("mesh", "meshdemo-tls-ca")]
    upgraded = render_against(api, MUTUAL, upgrade=True)
    for secret in ("meshdemo-tls-ca", "meshdemo-tls", "meshdemo-tls-client"):
        assert _pem(upgraded, secret) != _pem(installed, secret), secret
    ca = _cert(upgraded, "meshdemo-tls-ca")
    _server_verifier(ca, "meshdemo-users.mesh").verify(_cert(upgraded, "meshdemo-tls"), [])
