"""The generated code in meshdemo/ matches protos/, and the check notices when it does not."""

from __future__ import annotations

import re
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

    # Importing it at all proves it found its messages' module by the package path
    # (a bare `import user_pb2` would have failed); no top-level copy was loaded.
    assert user_pb2_grpc.UserServiceStub.__module__ == "meshdemo.v1.user_pb2_grpc"
    assert "user_pb2" not in sys.modules
    assert catalog_pb2.Order.DESCRIPTOR.full_name == "meshdemo.v1.Order"


def test_the_contract_constants_come_from_the_descriptors() -> None:
    from meshdemo import contract
    from meshdemo.v1 import limits_pb2, user_pb2

    service = user_pb2.DESCRIPTOR.services_by_name["UserService"]
    assert contract.SERVICE_NAME == service.full_name == "meshdemo.v1.UserService"
    batch = service.methods_by_name["BatchCreateUsers"].GetOptions()
    assert contract.MAX_BATCH == batch.Extensions[limits_pb2.max_request_messages] == 1000
    page = user_pb2.ListUsersRequest.DESCRIPTOR.fields_by_name["page_size"].GetOptions()
    assert contract.DEFAULT_PAGE_SIZE == page.Extensions[limits_pb2.default_page_size] == 100
    assert contract.MAX_PAGE_SIZE == page.Extensions[limits_pb2.max_page_size] == 1000
    assert dict(contract.ROLES) == {
        "user": user_pb2.ROLE_USER,
        "admin": user_pb2.ROLE_ADMIN,
        "moderator": user_pb2.ROLE_MODERATOR,
    }
    assert contract.role_name(user_pb2.ROLE_UNSPECIFIED) == "unspecified"
    assert contract.role_name(7) == "role_7"


def test_service_and_client_use_the_contract_constants_not_copies() -> None:
    from client import _client, _endpoint
    from meshdemo import contract
    from service import auth, domain, health

    assert domain.MAX_BATCH is contract.MAX_BATCH is _client.MAX_BATCH
    assert domain.DEFAULT_PAGE_SIZE == contract.DEFAULT_PAGE_SIZE
    assert domain.MAX_PAGE_SIZE == contract.MAX_PAGE_SIZE
    assert domain.ROLES == frozenset(contract.ROLES) == frozenset(_client.ROLES)
    assert health.SERVICE_NAME is contract.SERVICE_NAME is _endpoint.HEALTH_SERVICE_NAME
    assert auth.access_for(f"/{contract.SERVICE_NAME}/CreateUser") is auth.Access.ADMIN


def test_no_copy_of_a_contract_constant_is_left_in_service_or_client() -> None:
    copies = re.compile(
        r'"/?meshdemo\.v1\.UserService/?"|^(MAX_BATCH|_MAX_PAGE|_DEFAULT_PAGE)\s*=\s*\d'
    )
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("service", "client")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if copies.search(line)
    ]
    assert found == []


def test_a_lost_limit_annotation_fails_at_import(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "meshdemo", tmp_path / "meshdemo")
    proto = tmp_path / "protos" / "meshdemo" / "v1" / "user.proto"
    text = proto.read_text()
    option = "    option (meshdemo.v1.max_request_messages) = 1000;\n"
    assert option in text
    proto.write_text(text.replace(option, ""))
    regenerate = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert regenerate.returncode == 0, regenerate.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import meshdemo.contract"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 1
    assert "lost its (meshdemo.v1.max_request_messages) option" in imported.stderr
    assert "meshdemo.v1.UserService.BatchCreateUsers" in imported.stderr
