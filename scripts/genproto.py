"""Generate the Python code for protos/ into meshdemo/, or check that it is current.

Usage:
    python scripts/genproto.py          # regenerate meshdemo/v1/*
    python scripts/genproto.py --check  # exit 1 if the committed code is stale

The proto path mirrors the Python package (protos/meshdemo/v1/x.proto becomes
meshdemo/v1/x_pb2.py), so the generated imports read ``from meshdemo.v1 import
x_pb2`` and work without any sys.path edits. Output depends on the pinned
grpcio-tools and mypy-protobuf versions in pyproject.toml.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("meshdemo") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generate(proto_root: Path, out_dir: Path) -> list[Path]:
    protos = sorted((proto_root / PACKAGE).glob("*.proto"))
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(proto_root)) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=proto_root, stdout=subprocess.DEVNULL)
    return sorted(
        p.relative_to(out_dir)
        for p in (out_dir / PACKAGE).iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def _stale(root: Path, fresh_dir: Path, files: list[Path]) -> list[str]:
    committed = {
        p.relative_to(root)
        for p in (root / PACKAGE).iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    }
    problems = [f"missing: {f}" for f in files if f not in committed]
    problems += [f"not generated any more: {f}" for f in sorted(committed - set(files))]
    problems += [
        f"differs: {f}"
        for f in files
        if f in committed and not filecmp.cmp(fresh_dir / f, root / f, shallow=False)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; change nothing")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="project root holding protos/ and meshdemo/"
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / PACKAGE).mkdir(parents=True)
        files = _generate(root / "protos", out)
        if args.check:
            problems = _stale(root, out, files)
            for line in problems:
                print(f"stale generated code, {line}", file=sys.stderr)
            if problems:
                print("run: python scripts/genproto.py", file=sys.stderr)
            return 1 if problems else 0
        for f in files:
            shutil.copyfile(out / f, root / f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
