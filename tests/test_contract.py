"""The generated code in meshdemo/ matches protos/, and the check notices when it does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "genproto.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_committed_generated_code_is_current() -> None:
    result = _check(ROOT)
    assert result.returncode == 0, result.stderr


def test_a_changed_proto_makes_the_check_fail(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "meshdemo", tmp_path / "meshdemo")
    proto = tmp_path / "protos" / "meshdemo" / "v1" / "user.proto"
    proto.write_text(proto.read_text().replace("string page_token = 2;", "string cursor = 2;"))
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "differs: meshdemo/v1/user_pb2.py" in result.stderr
    assert "run: python scripts/genproto.py" in result.stderr


def test_generated_modules_import_as_a_package() -> None:
    # No sys.path edits: the proto path mirrors the package.
    from meshdemo.v1 import catalog_pb2, user_pb2_grpc

    assert user_pb2_grpc.UserServiceStub
    assert catalog_pb2.Order.DESCRIPTOR.full_name == "meshdemo.v1.Order"
