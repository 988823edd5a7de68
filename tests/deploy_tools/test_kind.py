"""deploy/kind/cluster.yaml against the project's own schema, and what kind needs of it.

kind cannot run here (no container engine); deploy/kind/cluster.schema.json
holds the config to the rules of this project, and these checks say why.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy_tools.conftest import ROOT, load_yaml, missing_tool

KIND = ROOT / "deploy" / "kind"
IMAGE = re.compile(
    r"kindest/node:v1\.(?P<minor>\d+)\.(?P<patch>\d+)@sha256:(?P<digest>[0-9a-f]{64})"
)
# The images kind v0.30.0 published with its release notes
# (https://github.com/kubernetes-sigs/kind/releases/tag/v0.30.0); the config must use one.
KIND_V0_30_IMAGES = {
    "v1.34.0": "7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a",
}
NODE_PORT = 30686


@pytest.fixture(scope="module")
def config() -> Any:
    return load_yaml(KIND / "cluster.yaml")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((KIND / "cluster.schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    )


def test_validates_against_its_schema(config: Any, validator: Any) -> None:
    assert errors(validator, config) == []


def test_one_control_plane_and_two_workers(config: Any) -> None:
    roles = [node["role"] for node in config["nodes"]]
    assert sorted(roles) == ["control-plane", "worker", "worker"]


def test_every_node_runs_one_published_image_pinned_by_digest(config: Any) -> None:
    images = {node["image"] for node in config["nodes"]}
    assert len(images) == 1, "all nodes on one Kubernetes version"
    match = IMAGE.fullmatch(images.pop())
    assert match, "kindest/node:v1.X.Y@sha256:<64 hex>"
    assert 31 <= int(match["minor"]) <= 34
    version = f"v1.{match['minor']}.{match['patch']}"
    assert KIND_V0_30_IMAGES.get(version) == match["digest"], "a digest kind published"


def test_host_ports_listen_on_loopback_only(config: Any) -> None:
    mappings = [m for node in config["nodes"] for m in node.get("extraPortMappings", ())]
    assert mappings, "the Jaeger UI mapping"
    for mapping in mappings:
        assert ipaddress.ip_address(mapping["listenAddress"]).is_loopback, mapping
    jaeger = [m for m in mappings if m["containerPort"] == NODE_PORT]
    assert jaeger and 30000 <= NODE_PORT <= 32767, "a port in the NodePort range"
    assert jaeger[0]["hostPort"] != 16686, "16686 stays free for kubectl port-forward"


def test_the_readme_the_e2e_script_skaffold_and_the_chart_use_the_same_ports() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    script = (KIND / "e2e.sh").read_text(encoding="utf-8")
    assert f"http://127.0.0.1:{NODE_PORT}" in readme
    assert f"\nUI_NODE_PORT={NODE_PORT}\n" in script
    assert "--config" in script and "deploy/kind/cluster.yaml" in readme
    # The mapping reaches Jaeger because skaffold makes its Service the chart's NodePort.
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert values["jaeger"]["service"]["uiNodePort"] == NODE_PORT
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    releases = [skaffold["deploy"]["helm"]["releases"][0]] + [
        p["deploy"]["helm"]["releases"][0] for p in skaffold["profiles"]
    ]
    assert all(r["setValues"]["jaeger.service.type"] == "NodePort" for r in releases)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["nodes"][0].update(image="kindest/node:v1.34.0"), "nodes/0/image"),
        (lambda c: c["nodes"][1].update(image="kindest/node:latest"), "nodes/1/image"),
        (
            lambda c: c["nodes"][1].update(image="kindest/node:v1.30.0@sha256:" + "a" * 64),
            "nodes/1/image",
        ),
        (
            lambda c: c["nodes"][1].update(image="kindest/node:v1.35.0@sha256:" + "a" * 64),
            "nodes/1/image",
        ),
        (lambda c: c["nodes"][0]["extraPortMappings"][0].update(listenAddress="0.0.0.0"), "listen"),
        (lambda c: c["nodes"].pop(), "nodes: "),
        (lambda c: c["nodes"].append(copy.deepcopy(c["nodes"][0])), "nodes: "),
        (lambda c: c.update(networking={"disableDefaultCNI": True}), "Additional properties"),
        (lambda c: c.update(apiVersion="kind.x-k8s.io/v1alpha3"), "apiVersion"),
    ],
)
def test_the_schema_catches_a_broken_config(
    config: Any, validator: Any, change: Any, problem: str
) -> None:
    broken = copy.deepcopy(config)
    change(broken)
    found = errors(validator, broken)
    assert any(problem in e for e in found), found


# --- the end-to-end script ----------------------------------------------------------------------

SCRIPT = KIND / "e2e.sh"


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        missing_tool("shellcheck is not installed (Debian: apt-get install shellcheck)")
    return path


def test_the_e2e_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        [shellcheck(), "-x", str(SCRIPT.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_does_find_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n", encoding="utf-8")
    result = subprocess.run(
        [shellcheck(), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_the_e2e_script_is_strict_bounded_and_cleans_up() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert SCRIPT.stat().st_mode & 0o111, "executable"
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert "trap cleanup EXIT" in text and 'kind delete cluster --name "${CLUSTER}"' in text
    for tool in ("docker", "kind", "helm", "kubectl", "skaffold"):
        assert f"need {tool} " in text, tool
    assert 'skaffold run --kube-context "${CONTEXT}"' in text
    assert "-p chaos" not in text and "chaos" not in re.findall(r"--profile \S+", text), (
        "chaos stays off"
    )
    # The one profile is the caller's (MESHDEMO_E2E_PROFILE, e.g. mtls), and only when set.
    assert re.findall(r"--profile \S+", text) == ['--profile "${PROFILE}")']
    assert 'PROFILE="${MESHDEMO_E2E_PROFILE:-}"' in text
    assert 'if [[ -n "${PROFILE}" ]]; then' in text
    assert "exec deploy/meshdemo-loadgen -c loadgen" in text
    assert re.search(r"load --json --no-live --duration", text)
    assert "--grace-period=0 --force" in text, "a forced kill after the graceful one"
    for query in ("query.service_name=", "query.start_time_min=", "query.start_time_max="):
        assert query in text
    assert "/api/v3/services" in text and '"failed"' in text


def test_the_e2e_script_checks_the_services_jaeger_knows() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert "SERVICES=(meshdemo-user-service meshdemo-loadgen)" in text
