"""Fixtures: two independent certificate sets (CA A and CA B), issued once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tls.helpers import issue


@pytest.fixture(scope="session")
def certs_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue(tmp_path_factory.mktemp("ca-a"))


@pytest.fixture(scope="session")
def certs_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue(tmp_path_factory.mktemp("ca-b"))
