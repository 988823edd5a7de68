"""Who may import whom: the client ships without the server, and neither knows the mesh.

The local mesh uses ``service`` and ``client`` from outside; the client library
must install and run where the service's code is absent (another team's
process, the load generator's image), so no module under ``client/`` names
``service``, and nothing under either names ``mesh``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = {
    "client": {"service", "mesh"},
    "service": {"mesh"},
    "meshdemo": {"service", "client", "mesh"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_none_of_what_it_must_not(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & RULES[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_imports() -> None:
    assert {"service", "client"} <= _imported_packages(ROOT / "mesh" / "_supervisor.py") | (
        _imported_packages(ROOT / "mesh" / "_replica.py")
        | _imported_packages(ROOT / "mesh" / "_demo.py")
    )
