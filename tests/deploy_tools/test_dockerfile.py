"""The Dockerfile, read by a real Dockerfile parser: pinned bases, non-root, no compilers.

No container engine runs here, so the image is never built; test_image.py
installs the same wheel the same way into a fresh venv instead.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from mesh._replica import replica_argv

ROOT = Path(__file__).resolve().parents[2]
# An exact Python patch version on a named Debian release, e.g. python:3.11.14-slim-bookworm.
PINNED_PYTHON = re.compile(r"python:3\.(\d+)\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?")
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "python3-dev", "libpq-dev")


def stages(text: str) -> list[list[dict[str, Any]]]:
    """The instructions of each stage (comments dropped), in order."""
    # A file object, never a path: DockerfileParser writes `content` to its path.
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    result: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            result.append([])
        if item["instruction"] != "COMMENT" and result:
            result[-1].append(item)
    return result


def is_pinned(image: str) -> bool:
    """An exact python:3.X.Y-slim-<debian> base, never a floating tag."""
    return PINNED_PYTHON.fullmatch(image) is not None


def is_numeric_non_root(user_spec: str) -> bool:
    """USER uid:gid with both numeric and the uid a non-system, non-root one."""
    user, _, group = user_spec.partition(":")
    return user.isdigit() and int(user) >= 10000 and group.isdigit() and int(group) != 0


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == instruction]


@pytest.fixture(scope="module")
def dockerfile() -> list[list[dict[str, Any]]]:
    return stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def test_multi_stage_with_every_base_pinned_to_an_exact_version(dockerfile: Any) -> None:
    assert len(dockerfile) >= 2, "a builder stage and a runtime stage"
    python_minor = set()
    for stage in dockerfile:
        image = values(stage, "FROM")[0].split()[0]
        assert is_pinned(image), f"FROM {image} is not a pinned python:3.X.Y-slim-<debian> base"
        python_minor.add(int(PINNED_PYTHON.fullmatch(image).group(1)))  # type: ignore[union-attr]
    assert len({values(s, "FROM")[0].split()[0] for s in dockerfile}) == 1, "one base for all"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"
    assert min(python_minor) >= 11


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Any) -> None:
    users = values(dockerfile[-1], "USER")
    assert users, "the final stage sets USER"
    assert is_numeric_non_root(users[-1]), users[-1]


def test_final_stage_installs_the_built_wheel_and_no_compiler(dockerfile: Any) -> None:
    final = dockerfile[-1]
    runs = " ".join(values(final, "RUN"))
    assert "from=builder" in runs and "/wheels/*.whl" in runs
    assert "--only-binary=:all:" in runs, "a dependency without a wheel must fail, not compile"
    assert not re.search(r"apt-get\s+install|apk\s+add", runs), "no system packages at all"
    assert not any(re.search(rf"(^|\s){re.escape(tool)}(\s|$)", runs) for tool in COMPILERS)
    copied = " ".join(values(final, "COPY"))
    assert "service" not in copied and "client" not in copied, "no source tree in the final stage"


def test_builder_builds_a_wheel_without_dependencies(dockerfile: Any) -> None:
    runs = " ".join(values(dockerfile[0], "RUN"))
    assert re.search(r"pip wheel --no-deps --wheel-dir /wheels \.", runs)


def test_runtime_environment_and_ports(dockerfile: Any) -> None:
    final = dockerfile[-1]
    env = " ".join(values(final, "ENV"))
    assert "PYTHONUNBUFFERED=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    exposed = {p for line in values(final, "EXPOSE") for p in line.split()}
    assert exposed == {"50051", "9464"}
    workdir = values(final, "WORKDIR")[-1]
    assert workdir.startswith("/") and workdir != "/tmp"


def test_entrypoint_runs_the_modules_the_local_commands_run(dockerfile: Any) -> None:
    final = dockerfile[-1]
    entrypoint = json.loads(values(final, "ENTRYPOINT")[-1])
    cmd = json.loads(values(final, "CMD")[-1])
    assert entrypoint + cmd == ["python", "-m", "service"]
    # The chart swaps CMD for `client ...`; both must be runnable modules, and the
    # same ones pyproject's console scripts and the local mesh's replicas run.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts.values()) == {"service.__main__:main", "client.__main__:main"}
    for module in ("service", "client"):
        assert importlib.util.find_spec(f"{module}.__main__") is not None
    assert replica_argv("127.0.0.2", 50051)[1:3] == ["-m", "service"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (
        ".venv",
        "node_modules",
        ".git",
        ".pytest_cache",
        "*.db",
        "bench/results",
        ".mesh",
    ):
        assert entry in ignored, entry
    # What the builder copies must stay in the context.
    for needed in ("pyproject.toml", "README.md", "service", "client", "meshdemo", "mesh"):
        assert needed not in ignored, needed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM python:latest\nUSER 10001:10001\n", "unpinned"),
        ("FROM python:3.11-slim\nUSER 10001:10001\n", "unpinned"),
        ("FROM python:3.11.14-slim-bookworm\nUSER app\n", "user"),
        ("FROM python:3.11.14-slim-bookworm\nUSER 0:0\n", "user"),
        ("FROM python:3.11.14-slim-bookworm\nUSER 10001\n", "user"),
        ("FROM python:3.11.14-slim-bookworm\nUSER 10001:10001\n", "none"),
    ],
)
def test_the_checks_catch_bad_dockerfiles(text: str, problem: str) -> None:
    stage = stages(text)[-1]
    image = values(stage, "FROM")[0].split()[0]
    user = values(stage, "USER")[-1]
    assert (is_pinned(image), is_numeric_non_root(user)) == (
        problem != "unpinned",
        problem != "user",
    )
