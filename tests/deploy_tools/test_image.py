"""The image's install, without a container engine: the wheel in a fresh venv, then a real call.

No image can be built here, so this does what the Dockerfile does, step by
step: copy the files its builder stage copies into a directory away from the
source tree, ``pip wheel --no-deps`` them, install the wheel into a new
virtual environment (no system site packages, binary wheels only, as the
runtime stage does), then start ``python -m service`` from that environment
in a working directory outside the repository and drive it with
``python -m client`` from the same environment: token, create, get, list.
A module, generated file or dependency the package forgets fails here.

A test sends nothing off this machine, so the new environment does not
fetch the dependencies from the package index as the image build does. It
gets the wheel alone (``--no-index --no-deps``) and, through a ``.pth``
line, a directory holding exactly what pip would have installed with it:
the closure of the wheel's declared requirements (markers and extras
evaluated), file by file, linked from this checkout's environment. Nothing
else is visible, so a module that imports an undeclared distribution fails
here as it would in the image; and every requirement must be met at a
version it accepts.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy_tools.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# What the Dockerfile's builder stage copies (COPY lines), and nothing else.
BUILD_INPUTS = ("pyproject.toml", "README.md", "service", "client", "meshdemo", "mesh")
PACKAGES = {"service", "client", "meshdemo", "mesh"}
SECRET = "an-image-test-secret-that-is-at-least-32-bytes"
HOST = "127.0.0.9"


@dataclass(frozen=True)
class Installed:
    """The fresh environment and what was installed into it."""

    python: Path
    site_packages: Path
    wheel: Path
    workdir: Path


def _run(args: list[str | Path], cwd: Path, timeout: float = 240) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that points back at the source tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _copy_build_inputs(dest: Path) -> None:
    dest.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=skip)
        else:
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("image")
    assert ROOT not in base.parents, "the install must be away from the source tree"
    src, wheels, env_dir, workdir = base / "src", base / "wheels", base / "venv", base / "srv"
    _copy_build_inputs(src)
    # RUN pip wheel --no-deps --wheel-dir /wheels .
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, "."], src)
    (wheel,) = wheels.glob("*.whl")
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # RUN pip install --only-binary=:all: /wheels/*.whl, with the dependencies already here.
    _run([python, "-m", "pip", "install", "--no-index", "--no-deps", wheel], base)
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base
        ).strip()
    )
    deps = base / "dependencies"
    _link_closure(_wheel_requirements(wheel), deps)
    (site / "declared-dependencies.pth").write_text(f"{deps}\n")
    workdir.mkdir()
    return Installed(python, site, wheel, workdir)


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    return [Requirement(line.split(":", 1)[1]) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip


def _closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """The installed distributions pip would install for ``requirements`` (no extras of ours)."""
    found: dict[str, md.Distribution] = {}
    todo: list[tuple[Requirement, tuple[str, ...]]] = [(r, ("",)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in extras):
            continue
        dist = md.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (
            f"{requirement} is not met by the installed {dist.version}"
        )
        key = _normal(requirement.name)
        wanted = ("", *requirement.extras)
        if key in found and not requirement.extras:
            continue
        found[key] = dist
        todo += [(Requirement(r), wanted) for r in dist.requires or ()]
    return found


def _link_closure(requirements: list[Requirement], into: Path) -> None:
    """Link every installed file of the closure into ``into``, as a site directory."""
    for dist in _closure(requirements).values():
        for entry in dist.files or ():
            source = Path(str(dist.locate_file(entry))).resolve()
            target = into / entry
            if ".." in entry.parts or target.exists() or not source.is_file():
                continue  # scripts outside site-packages, or shared namespace files
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


# Imports every module of the installed packages (the lazy ones too: the k8s resolver,
# the OTLP exporter). Runs in the new environment, which sees nothing but the declared
# closure: an undeclared import fails it. A module that needs an optional extra (not in
# the image) must fail on exactly the module that extra brings, and on nothing else.
NEEDS_EXTRA = {"client._dns_server": ("testing", "dnslib")}
_DEPENDENCY_REPORT = """
import importlib, json, pkgutil, sys
needs_extra = json.loads(sys.argv[1])
missing = {}
for package in ("service", "client", "meshdemo"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if info.name not in needs_extra:
                raise
            missing[info.name] = exc.name
print(json.dumps({"imported": True, "missing": missing}))
"""


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.fixture(scope="module")
def dependencies(installed: Installed) -> dict[str, object]:
    report: dict[str, object] = json.loads(
        _run(
            [
                installed.python,
                "-c",
                _DEPENDENCY_REPORT,
                json.dumps({name: extra[1] for name, extra in NEEDS_EXTRA.items()}),
            ],
            installed.workdir,
        )
    )
    return report


def test_every_module_imports_with_only_the_declared_dependencies(
    dependencies: dict[str, object],
) -> None:
    assert dependencies["imported"] is True
    assert dependencies["missing"] == {name: extra[1] for name, extra in NEEDS_EXTRA.items()}


def test_the_modules_left_out_of_the_image_name_their_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name, (extra, module) in NEEDS_EXTRA.items():
        assert any(_normal(r).startswith(module) for r in extras[extra]), (name, extra)


def test_the_closure_excludes_the_development_tools() -> None:
    closure = _closure(_wheel_requirements_of_tree())
    assert {"grpcio", "protobuf", "psycopg-binary", "kubernetes"} <= closure.keys()
    assert not {"pytest", "grpcio-tools", "kubernetes-validate", "mypy"} & closure.keys()


def _wheel_requirements_of_tree() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_the_wheel_holds_the_packages_and_no_tests(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops - PACKAGES == {next(t for t in tops if t.endswith(".dist-info"))}
    assert not any(name.startswith("tests/") for name in names)


def test_the_install_carries_the_generated_code(installed: Installed) -> None:
    site = installed.site_packages
    assert not (site / "tests").exists()
    generated = {p.name for p in (site / "meshdemo" / "v1").glob("*_pb2*.py")}
    assert {"user_pb2.py", "user_pb2_grpc.py"} <= generated
    assert (site / "meshdemo" / "py.typed").is_file()
    assert list((site / "meshdemo" / "v1").glob("*.pyi")), "the type stubs"
    where = _run(
        [installed.python, "-c", "import client, service, meshdemo; print(service.__file__)"],
        installed.workdir,
    )
    assert Path(where.strip()).is_relative_to(site), "imported from the install, not the tree"


class ServiceProcess:
    """``python -m service`` from the fresh environment, its JSON log read by a thread."""

    def __init__(self, installed: Installed) -> None:
        store = f"sqlite:///{installed.workdir / 'users.db'}"
        args = ["-m", "service", "--host", HOST, "--port", "0", "--store", store]
        env = {**_clean_env(), "MESH_AUTH_SECRET": SECRET, "MESH_METRICS_PORT": "-1",
               "MESH_DRAIN_DELAY": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.proc = subprocess.Popen(
            [str(installed.python), *args],
            cwd=installed.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def address(self, timeout: float = 60) -> str:
        """The bound address from the ``serving`` log line."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail("no 'serving' line in time:\n" + "".join(self.log))
            self.log.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "serving":
                return str(entry["address"])

    def stop(self) -> int:
        """SIGTERM, wait for the exit (SIGKILL after 30 s), close the pipe; the exit code."""
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self._reader.join(timeout=10)  # EOF once the process is gone
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())
        return code


@pytest.fixture
def replica(installed: Installed) -> Iterator[str]:
    process = ServiceProcess(installed)
    try:
        yield process.address()
    finally:
        code = process.stop()
        assert code == 0, "graceful exit on SIGTERM:\n" + "".join(process.log)


def test_the_installed_service_answers_the_installed_client(
    installed: Installed, replica: str
) -> None:
    def client(*args: str) -> str:
        return _run([installed.python, "-m", "client", *args], installed.workdir, timeout=60)

    token = client("token", "--secret", SECRET, "--roles", "admin").strip()
    target = ["--target", f"static:///{replica}", "--token", token, "--json"]
    created = json.loads(
        client("create", *target, "--name", "Ada", "--email", "ada@example.com", "--age", "36")
    )
    fetched = json.loads(client("get", *target, created["id"]))
    assert fetched["email"] == "ada@example.com" and fetched["id"] == created["id"]
    listed = [json.loads(line) for line in client("list", *target).splitlines()]
    assert [user["id"] for user in listed] == [created["id"]]
