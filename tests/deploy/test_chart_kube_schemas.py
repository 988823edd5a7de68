"""Every rendered document is valid, strictly, for Kubernetes 1.30 to 1.34.

``kubernetes_validate.validate`` gives the verdict (and raises on the first error of a
document); every error of a failing document is then listed from the same strict schema,
and the errors of all documents, scenarios and versions are collected before the test
fails, so one run reports everything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from tests.deploy.conftest import (
    KUBE_VERSIONS,
    SCENARIOS,
    SERVICE_MONITOR_API,
    render,
)

#: Custom resources: kubernetes_validate ships only the built-in API schemas, and a CRD's
#: schema lives in the cluster that installed it (the Prometheus operator's, here).
CRD_KINDS = frozenset({"ServiceMonitor", "Certificate", "Issuer"})


def _schema_dir(version: str) -> str:
    return f"kubernetes-json-schema/v{version}-local-strict"


def _all_errors(doc: Mapping[str, Any], version: str) -> list[str]:
    """Every strict-schema error of ``doc`` (the validator's own verdict came first)."""
    # The file naming of kubernetes_validate: rbac.authorization.k8s.io/v1 -> rbac-v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    base = _schema_dir(version)
    schema = kv_utils.schema_contents(f"{base}/{doc['kind'].lower()}-{group_version}.json", version)
    definitions = kv_utils.schema_contents(f"{base}/_definitions.json", version)
    registry: Registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(dict(doc))
    ]


def validation_errors(docs: Iterable[Mapping[str, Any]], version: str) -> list[str]:
    """Every error of every document against Kubernetes ``version`` (empty when all are valid)."""
    problems: list[str] = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']} @ {version}"
        try:
            kubernetes_validate.validate(dict(doc), version, strict=True)
        except kubernetes_validate.ValidationError:
            problems.extend(f"{where}: {error}" for error in _all_errors(doc, version))
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: no schema: {exc.message}")
    return problems


def _unique_docs() -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each distinct document of the matrix once, with the scenarios that render it."""
    unique: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, values in sorted(SCENARIOS.items()):
        for doc in render(values).docs:
            if doc["kind"] in CRD_KINDS:
                continue  # test_chart_tls.py checks the cert-manager objects' fields
            key = json.dumps(doc, sort_keys=True)
            unique.setdefault(key, (doc, []))[1].append(name)
    return unique


def test_every_scenario_is_valid_for_every_version() -> None:
    # Identical documents of several scenarios are validated once (7 ms each).
    problems: list[str] = []
    for doc, scenarios in _unique_docs().values():
        for version in KUBE_VERSIONS:
            problems.extend(
                f"[{','.join(scenarios)}] {p}" for p in validation_errors([doc], version)
            )
    assert problems == [], "\n".join(problems)


def test_with_the_service_monitor_api_the_builtin_kinds_are_valid() -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}}, "loadgen": {"enabled": True}}
    docs = render(values, api_versions=[SERVICE_MONITOR_API]).docs
    assert {d["kind"] for d in docs} & CRD_KINDS, "the capability must render the CRD kind"
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    problems = [p for v in KUBE_VERSIONS for p in validation_errors(builtin, v)]
    assert problems == [], "\n".join(problems)


def test_the_collector_reports_every_error_of_every_document() -> None:
    good = render().get("Service", "meshdemo-users")
    bad_one = {**good, "metadata": {"name": "bad-one"}, "spec": {"ports": "no", "bogus": 1}}
    bad_two = {**good, "metadata": {"name": "bad-two", "unknownField": True}}
    problems = validation_errors([good, bad_one, bad_two], "1.30.0")
    assert len([p for p in problems if p.startswith("Service/bad-one")]) == 2
    assert len([p for p in problems if p.startswith("Service/bad-two")]) == 1
    assert not [p for p in problems if p.startswith("Service/meshdemo-users")]
    assert any("bogus" in p for p in problems)


def test_an_unknown_kind_is_reported_not_skipped() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    problems = validation_errors([doc], "1.30.0")
    assert len(problems) == 1
    assert problems[0].startswith("Widget/w @ 1.30.0: no schema")
