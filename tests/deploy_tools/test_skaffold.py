"""skaffold.yaml against skaffold's own v4beta14 JSON schema, plus what the schema cannot say.

skaffold itself cannot run here (no cluster, no container engine); its
published schema and these checks hold the file to what skaffold accepts and
to what kind needs.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import helm_python
import jsonschema
import pytest

from tests.deploy.conftest import CHART_DIR, render
from tests.deploy_tools.conftest import ROOT, load_yaml, shared_file

SCHEMA = "schemas/skaffold-v4beta14.json"
TEMPLATE = re.compile(r"\{\{\s*\.IMAGE_FULLY_QUALIFIED_(\w+)\s*\}\}")


@pytest.fixture(scope="module")
def config() -> Any:
    return load_yaml(ROOT / "skaffold.yaml")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(shared_file(SCHEMA).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The innermost errors: the schema's root is an anyOf, which hides them in context."""
    if not error.context:
        return [error]
    return [leaf for sub in error.context for leaf in leaves(sub)]


def errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Every error, each as ``path: message``."""
    found = [leaf for e in validator.iter_errors(document) for leaf in leaves(e)]
    found.sort(key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def releases(deploy: Any) -> list[Any]:
    return list(deploy["helm"]["releases"])


def test_validates_against_the_v4beta14_schema(config: Any, validator: Any) -> None:
    assert errors(validator, config) == []
    assert config["apiVersion"] == "skaffold/v4beta14" and config["kind"] == "Config"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["build"]["local"].update(pushh=False), "build/local: Additional"),
        (lambda c: c["deploy"]["helm"]["releases"][0].update(chart="x"), "releases/0: Additional"),
        (lambda c: c["profiles"][0].update(deploy="dev"), "profiles/0/deploy"),
        (lambda c: c["portForward"][0].update(localPort="x"), "portForward/0/localPort"),
    ],
)
def test_the_schema_catches_a_broken_config(
    config: Any, validator: Any, change: Any, problem: str
) -> None:
    broken = copy.deepcopy(config)
    change(broken)
    assert any(problem in e for e in errors(validator, broken))


def test_one_artifact_built_from_the_dockerfile_and_never_pushed(config: Any) -> None:
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == "meshdemo"
    assert artifact["docker"]["dockerfile"] == "Dockerfile"
    assert (ROOT / artifact.get("context", ".") / "Dockerfile").is_file()
    # kind: skaffold loads the image into a kind-* context; a push would need a registry.
    assert config["build"]["local"]["push"] is False
    assert config["build"]["local"]["useBuildkit"] is True, "the Dockerfile uses RUN --mount"


def every_release(config: Any) -> list[tuple[str, Any]]:
    found = [("base", r) for r in releases(config["deploy"])]
    for profile in config["profiles"]:
        found += [
            (profile["name"], r)
            for r in releases(profile.get("deploy") or {"helm": {"releases": []}})
        ]
    return found


def test_every_release_injects_the_built_image_by_full_reference(config: Any) -> None:
    artifacts = {a["image"] for a in config["build"]["artifacts"]}
    for where, release in every_release(config):
        assert release["chartPath"] == "deploy/helm", where
        assert release["name"] == "meshdemo" and release["namespace"] == "meshdemo", where
        assert release["createNamespace"] is True, where
        templates = release["setValueTemplates"]
        assert set(templates) == {"image.reference"}, where
        match = TEMPLATE.fullmatch(templates["image.reference"])
        assert match and match.group(1) in artifacts, (where, templates)


def test_no_tag_at_digest_template_anywhere() -> None:
    text = (ROOT / "skaffold.yaml").read_text(encoding="utf-8")
    assert "IMAGE_DIGEST" not in text and "IMAGE_TAG" not in text
    assert not re.search(r"\}\}@|@\{\{", text), "tag@digest breaks for local builds"


def test_profiles_override_whole_sections_without_index_patches(config: Any) -> None:
    names = [p["name"] for p in config["profiles"]]
    assert names == ["dev", "chaos", "tls", "mtls"]
    for profile in config["profiles"]:
        for patch in profile.get("patches") or ():
            assert not re.search(r"/\d+(/|$)", patch["path"]), (profile["name"], patch)
        assert "patches" not in profile, "a full deploy override, not patches"


def test_profiles_repeat_the_base_release_and_differ_only_in_values(config: Any) -> None:
    (base,) = releases(config["deploy"])
    values = {}
    for profile in config["profiles"]:
        (release,) = releases(profile["deploy"])
        assert {k: v for k, v in release.items() if k != "setValues"} == {
            k: v for k, v in base.items() if k != "setValues"
        }, profile["name"]
        assert (
            profile["deploy"]["statusCheckDeadlineSeconds"]
            == config["deploy"]["statusCheckDeadlineSeconds"]
        )
        # The base values stay; a profile only adds.
        assert release["setValues"].items() >= base["setValues"].items(), profile["name"]
        values[profile["name"]] = release["setValues"]
    assert base["setValues"]["loadgen.enabled"] is True
    assert values["dev"]["users.replicas"] == 2 and values["dev"]["users.logLevel"] == "DEBUG"
    assert values["chaos"]["chaos.enabled"] is True
    assert "chaos.enabled" not in base["setValues"], "no chaos without the profile"
    assert values["tls"]["tls.enabled"] is True and "tls.mutual" not in values["tls"]
    assert values["mtls"]["tls.enabled"] is True and values["mtls"]["tls.mutual"] is True
    assert "tls.enabled" not in base["setValues"], "plain text without a TLS profile"


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as Helm's --set reads it: ``{"a": {"b": 1}}``."""
    values: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


@pytest.mark.parametrize("profile", [None, "dev", "chaos", "tls", "mtls"])
def test_every_profile_renders_with_the_chart_and_lints(config: Any, profile: str | None) -> None:
    """The values each profile sets are the chart's: Helm's engine renders and lints them."""
    deploy = (
        config["deploy"]
        if profile is None
        else next(p["deploy"] for p in config["profiles"] if p["name"] == profile)
    )
    (release,) = releases(deploy)
    assert ROOT / release["chartPath"] == CHART_DIR
    values = _nested({**release["setValues"], "image.reference": "meshdemo:skaffold-test"})
    rendered = render(values, name=release["name"], namespace=release["namespace"])
    kinds = {doc["kind"] for doc in rendered.docs}
    assert {"Deployment", "Service"} <= kinds, profile
    if profile in ("tls", "mtls"):
        assert "Secret" in kinds
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version="v1.34.0")
    assert (report["errors"], report["messages"]) == ([], []), profile


def test_port_forwards_for_jaeger_and_the_service_on_loopback(config: Any) -> None:
    forwards = {(f["resourceName"], f["port"]): f for f in config["portForward"]}
    jaeger = forwards[("meshdemo-jaeger", 16686)]
    users = forwards[("meshdemo-users", 50051)]
    for forward in (jaeger, users):
        assert forward["resourceType"] == "service" and forward["namespace"] == "meshdemo"
        assert forward["address"] == "127.0.0.1"
        assert forward["localPort"] == forward["port"]
