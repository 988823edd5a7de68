"""Fixtures: two real replicas on 127.0.0.2 and 127.0.0.3 sharing one store, and a CLI runner."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.cli import main_async
from service.testing import InProcessServer, admin_token, serve


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    out: str
    err: str


@dataclass
class Mesh:
    """Two replicas and the static target that names both."""

    replicas: tuple[InProcessServer, InProcessServer]

    @property
    def target(self) -> str:
        return "static:///" + ",".join(r.address for r in self.replicas)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    store = f"sqlite:///{tmp_path / 'users.db'}"
    async with (
        serve("127.0.0.2", store_url=store) as first,
        serve("127.0.0.3", store_url=store) as second,
    ):
        yield Mesh((first, second))


class Cli:
    """Runs ``main_async`` in the test's event loop with captured streams."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    async def __call__(self, *argv: str, stdin: str = "") -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = await main_async(
            list(argv), env=self.env, stdin=io.StringIO(stdin), stdout=out, stderr=err
        )
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(mesh: Mesh) -> Cli:
    """A CLI whose MESH_TARGET and MESH_TOKEN point at the mesh as an admin."""
    return Cli({"MESH_TARGET": mesh.target, "MESH_TOKEN": admin_token()})


@pytest.fixture
def offline_cli() -> Cli:
    """A CLI with an empty environment (no replica needed)."""
    return Cli({})


def lines(text: str) -> Sequence[str]:
    return [line for line in text.splitlines() if line.strip()]
