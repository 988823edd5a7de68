"""Gaps the split into one module per command showed: paths no other test took."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from client.cli import EXIT_OK, EXIT_USAGE, UsageError, read_batch
from service.testing import admin_token, serve
from tests.cli.conftest import Cli, Mesh, lines


async def test_batch_refuses_a_file_that_is_not_utf8(offline_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"name": "Jos\xe9", "email": "j@example.com", "age": 1}\n')
    # No target is reachable here: the file is refused before any connection.
    result = await offline_cli("batch", str(path), "--target", "static:///127.0.0.1:1")
    assert result.code == EXIT_USAGE
    assert result.err.startswith(f"error: {path} is not UTF-8 text")


def test_read_batch_skips_blank_lines_and_keeps_the_order() -> None:
    rows = [{"name": f"N{n}", "email": f"n{n}@example.com", "age": n} for n in range(3)]
    text = "\n\n".join(json.dumps(r) for r in rows)
    specs = read_batch(io.StringIO(text))  # lines 1, 3 and 5: numbers count blank lines
    assert [(s.name, s.roles, s.request_id) for s in specs] == [
        ("N0", ("user",), None), ("N1", ("user",), None), ("N2", ("user",), None),
    ]  # fmt: skip
    with pytest.raises(UsageError, match="line 6: request_id must be a string"):
        read_batch(
            io.StringIO(text + '\n{"name": "x", "email": "x@x.io", "age": 1, "request_id": 5}')
        )


async def test_stats_for_a_person_is_indented_json(cli: Cli, mesh: Mesh) -> None:
    result = await cli("stats")
    assert result.code == EXIT_OK, result.err
    assert result.out.startswith('{\n  "target": ')
    assert json.loads(result.out)["target"] == mesh.target


async def test_list_all_follows_pages_of_one_user_to_the_end(cli: Cli) -> None:
    for n in range(5):
        await cli("create", "--name", f"P{n}", "--email", f"p{n}@example.com", "--age", "1")
    # Six pages (the last one empty), each within --timeout: the deadline is renewed per page.
    result = await cli("list", "--all", "--page-size", "1", "--timeout", "2", "--json")
    assert result.code == EXIT_OK, result.err
    assert len(lines(result.out)) == 5


async def test_list_all_gets_its_timeout_per_page_not_for_the_whole_listing(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'slow.db'}"
    async with serve("127.0.0.6", store_url=store, fault_delay=0.3) as slow:
        cli = Cli({"MESH_TARGET": f"static:///{slow.address}", "MESH_TOKEN": admin_token()})
        for n in range(4):
            await cli("create", "--name", f"S{n}", "--email", f"s{n}@example.com", "--age", "1")
        # Five pages of 0.3 s or more: 1.5 s in all, past one --timeout (0.8 s + 0.5 s set-up).
        result = await cli("list", "--all", "--page-size", "1", "--timeout", "0.8", "--json")
    assert result.code == EXIT_OK, result.err
    assert len(lines(result.out)) == 4
