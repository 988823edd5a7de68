"""Generated secrets survive an upgrade: the chart's ``lookup`` branch, rendered for real.

No cluster can run here, so a small HTTP server on 127.0.0.1 (port 0) stands in for the
Kubernetes API: it answers the discovery request and GETs of Secrets, which is all that
Helm's ``lookup`` asks. Helm's engine (``helm_python.Config.render``) renders against it.
The first render plays the install (the fake holds no Secret, so values are generated);
its Secrets are then stored in the fake, as the install would create them, and a second
render plays the upgrade.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import helm_python
import pytest

from tests.deploy.conftest import CHART_DIR, NAMESPACE, RELEASE, Rendered, parse
from tests.fake_http import JsonHandler, LoopbackHttpServer

_NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
_CORE_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["get", "list"],
        }
    ],
}


class FakeSecretsApi(LoopbackHttpServer):
    """Serves ``/api/v1`` discovery and ``GET /api/v1/namespaces/NS/secrets/NAME``."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        super().__init__(self._handler())

    def store(self, secret: dict[str, Any]) -> None:
        """Keep ``secret`` as the API server would after creating it."""
        self.secrets[(NAMESPACE, secret["metadata"]["name"])] = secret

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        self.requests.append(path)
        parts = path.split("?")[0].strip("/").split("/")
        if parts == ["api", "v1"]:
            return 200, _CORE_RESOURCES
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
            secret = self.secrets.get((parts[3], parts[5]))
            return (200, secret) if secret else (404, _NOT_FOUND)
        return 404, _NOT_FOUND

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self.send_json(*api.answer(self.path))

        return Handler


_EMPTY_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"


@pytest.fixture
def api() -> Iterator[FakeSecretsApi]:
    fake = FakeSecretsApi()
    fake.start()
    try:
        yield fake
    finally:
        fake.close()


def render_against(
    api: FakeSecretsApi, values: dict[str, Any] | None = None, *, upgrade: bool
) -> Rendered:
    with (
        helm_python.Config(
            kube_apiserver=api.url, namespace=NAMESPACE, kubeconfig_content=_EMPTY_KUBECONFIG
        ) as config,
        helm_python.Chart.load(CHART_DIR) as chart,
    ):
        sources = config.render(
            chart,
            values or {},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    return parse(sources)


def _data(rendered: Rendered, name: str, key: str) -> str:
    return base64.b64decode(rendered.get("Secret", name)["data"][key]).decode()


def _install(api: FakeSecretsApi, values: dict[str, Any] | None = None) -> Rendered:
    installed = render_against(api, values, upgrade=False)
    for secret in installed.of_kind("Secret"):
        api.store(secret)
    return installed


def test_lookup_asks_the_api_for_both_generated_secrets(api: FakeSecretsApi) -> None:
    render_against(api, upgrade=False)
    asked = {path.split("?")[0] for path in api.requests}
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/meshdemo-auth" in asked
    assert f"/api/v1/namespaces/{NAMESPACE}/secrets/meshdemo-postgresql" in asked


def test_an_upgrade_keeps_the_generated_secrets(api: FakeSecretsApi) -> None:
    installed = _install(api)
    upgraded = render_against(api, upgrade=True)
    assert _data(upgraded, "meshdemo-auth", "jwt-secret") == (
        _data(installed, "meshdemo-auth", "jwt-secret")
    )
    for key in ("password", "url"):
        assert _data(upgraded, "meshdemo-postgresql", key) == (
            _data(installed, "meshdemo-postgresql", key)
        )


def test_an_upgrade_with_the_same_values_does_not_roll_the_pods(api: FakeSecretsApi) -> None:
    installed = _install(api)
    upgraded = render_against(api, upgrade=True)

    def checksum(rendered: Rendered) -> str:
        template = rendered.get("Deployment", "meshdemo-users")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(upgraded) == checksum(installed)


def test_an_explicit_secret_wins_over_the_clusters(api: FakeSecretsApi) -> None:
    _install(api)
    explicit = "e" * 40
    upgraded = render_against(api, {"auth": {"secret": explicit}}, upgrade=True)
    assert _data(upgraded, "meshdemo-auth", "jwt-secret") == explicit


def test_a_deleted_secret_is_generated_anew(api: FakeSecretsApi) -> None:
    installed = _install(api)
    api.secrets.clear()
    again = render_against(api, upgrade=True)
    assert _data(again, "meshdemo-auth", "jwt-secret") != (
        _data(installed, "meshdemo-auth", "jwt-secret")
    )
