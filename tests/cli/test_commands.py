"""Every command against two real replicas, in-process: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import mint_token
from client.cli import EXIT_AUTH, EXIT_OK, EXIT_RPC, EXIT_UNAVAILABLE, EXIT_USAGE
from service.testing import reader_token, serve
from tests.cli.conftest import Cli, Mesh, lines


async def _create(cli: Cli, n: int, *extra: str) -> dict[str, object]:
    result = await cli(
        "create", "--name", f"User {n}", "--email", f"u{n}@example.com", "--age", "30",
        "--json", *extra,
    )  # fmt: skip
    assert result.code == EXIT_OK, result.err
    user: dict[str, object] = json.loads(result.out)
    return user


async def test_create_then_get(cli: Cli) -> None:
    user = await _create(cli, 1, "--role", "admin", "--role", "moderator")
    assert user["roles"] == ["admin", "moderator"]
    result = await cli("get", str(user["id"]))
    assert result.code == EXIT_OK
    assert f"{user['id']}  User 1 <u1@example.com>  age 30  roles admin,moderator" in result.out
    as_json = await cli("get", str(user["id"]), "--json")
    assert json.loads(as_json.out) == user


async def test_create_with_the_same_request_id_returns_the_same_user(cli: Cli) -> None:
    first = await _create(cli, 2, "--request-id", "req-42")
    again = await _create(cli, 2, "--request-id", "req-42")
    assert again["id"] == first["id"]


async def test_get_unknown_id_is_not_found(cli: Cli) -> None:
    result = await cli("get", "no-such-user")
    assert result.code == EXIT_RPC
    assert result.out == ""
    assert result.err.startswith("error: NOT_FOUND: ")
    assert len(lines(result.err)) == 1


async def test_invalid_create_lists_field_violations(cli: Cli) -> None:
    result = await cli("create", "--name", "x", "--email", "not-an-email", "--age", "200")
    assert result.code == EXIT_RPC
    err = lines(result.err)
    assert err[0].startswith("error: INVALID_ARGUMENT: ")
    assert any(line.startswith("  email: ") for line in err[1:])
    assert any(line.startswith("  age: ") for line in err[1:])


async def test_duplicate_email_is_already_exists(cli: Cli) -> None:
    await _create(cli, 3)
    result = await cli("create", "--name", "Other", "--email", "u3@example.com", "--age", "1")
    assert (result.code, result.err.split(":")[1].strip()) == (EXIT_RPC, "ALREADY_EXISTS")


async def test_writes_need_the_admin_role(cli: Cli) -> None:
    result = await cli(
        "create", "--name", "A", "--email", "a@example.com", "--age", "1",
        "--token", reader_token(),
    )  # fmt: skip
    assert result.code == EXIT_AUTH
    assert result.err.startswith("error: PERMISSION_DENIED: ")


#: Well formed, signed with a key the replicas do not know.
FORGED = mint_token("a-key-the-replicas-do-not-know-at-all", "mallory", ["admin"], 600)


async def test_a_bad_token_is_unauthenticated(cli: Cli) -> None:
    result = await cli("get", "x", "--token", FORGED)
    assert result.code == EXIT_AUTH
    assert result.err.startswith("error: UNAUTHENTICATED: ")


async def test_list_pages_with_tokens_and_all(cli: Cli) -> None:
    created = [await _create(cli, n) for n in range(5)]
    ids = sorted(str(u["id"]) for u in created)
    first = await cli("list", "--page-size", "2", "--json")
    assert [json.loads(line)["id"] for line in lines(first.out)] == ids[:2]
    token = first.err.split("--page-token ")[1].strip()
    second = await cli("list", "--page-size", "2", "--page-token", token, "--json")
    assert [json.loads(line)["id"] for line in lines(second.out)] == ids[2:4]
    everything = await cli("list", "--page-size", "2", "--all", "--json")
    assert [json.loads(line)["id"] for line in lines(everything.out)] == ids
    assert everything.err == ""
    human = await cli("list")
    assert len(lines(human.out)) == 5
    assert human.err == ""  # a short page: no next page


async def test_list_with_a_bad_page_token(cli: Cli) -> None:
    result = await cli("list", "--page-token", "garbage")
    assert result.code == EXIT_RPC
    assert "page_token" in result.err


async def test_batch_from_a_file_and_from_stdin(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    rows = [
        {"name": "B1", "email": "b1@example.com", "age": 1, "roles": ["admin"]},
        {"name": "B2", "email": "b2@example.com", "age": 2, "request_id": "batch-b2"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = await cli("batch", str(path), "--json")
    assert result.code == EXIT_OK, result.err
    users = [json.loads(line) for line in lines(result.out)]
    assert [(u["name"], u["roles"]) for u in users] == [("B1", ["admin"]), ("B2", ["user"])]
    piped = await cli("batch", "-", stdin=json.dumps({"name": "B3", "email": "b3@x.org", "age": 3}))
    assert piped.code == EXIT_OK
    assert "B3 <b3@x.org>" in piped.out
    assert "created 1 users" in piped.err


async def test_batch_with_bad_lines_reports_them_and_sends_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "users.jsonl"
    path.write_text(
        json.dumps({"name": "Good", "email": "good@example.com", "age": 1}) + "\n"
        "{not json\n"
        "\n"
        + json.dumps({"name": "No age", "email": "n@example.com"}) + "\n"
        + json.dumps({"name": "R", "email": "r@example.com", "age": 1, "roles": ["king"]}) + "\n"
        + json.dumps({"name": "T", "email": "t@example.com", "age": True}) + "\n"
        + json.dumps({"name": "X", "email": "x@example.com", "age": 1, "extra": 1}) + "\n"
        + "[1, 2]\n"
    )  # fmt: skip
    result = await cli("batch", str(path))
    assert result.code == EXIT_USAGE
    for number, reason in [(2, "invalid JSON"), (4, "missing field"), (5, "roles"),
                           (6, "age must be an integer"), (7, "unknown field"),
                           (8, "not a JSON object")]:  # fmt: skip
        assert f"line {number}: {reason}" in result.err
    assert "line 1:" not in result.err
    listing = await cli("list", "--json")
    assert listing.out == ""  # nothing was created


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "no user"), ("\n\n", "no user")],
)
async def test_batch_refuses_an_empty_file(
    cli: Cli, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    result = await cli("batch", str(path))
    assert (result.code, message in result.err) == (EXIT_USAGE, True)


async def test_batch_refuses_a_missing_file_and_too_many_users(cli: Cli, tmp_path: Path) -> None:
    missing = await cli("batch", str(tmp_path / "nope.jsonl"))
    assert missing.code == EXIT_USAGE
    assert "cannot read" in missing.err
    too_many = "\n".join(
        json.dumps({"name": f"N{n}", "email": f"n{n}@example.com", "age": 1}) for n in range(1001)
    )
    result = await cli("batch", "-", stdin=too_many)
    assert result.code == EXIT_USAGE
    assert "at most 1000" in result.err


async def test_batch_invalid_on_the_server_names_the_item(cli: Cli) -> None:
    stdin = json.dumps({"name": "", "email": "e@example.com", "age": 1})
    result = await cli("batch", "-", stdin=stdin)
    assert result.code == EXIT_RPC
    assert result.err.startswith("error: INVALID_ARGUMENT")
    assert "\n  users[0].name: " in result.err


async def test_chat_echoes_each_line_with_replica_and_time(cli: Cli) -> None:
    result = await cli("chat", "--user-id", "u-7", stdin="hello\n\nworld\n")
    assert result.code == EXIT_OK, result.err
    replies = lines(result.out)
    assert len(replies) == 2
    assert replies[0].startswith("[test-127.0.0.")
    assert replies[0].endswith("Z] hello")
    as_json = await cli("chat", "--user-id", "u-7", "--json", stdin="one\n")
    reply = json.loads(as_json.out)
    assert (reply["text"], reply["user_id"]) == ("one", "u-7")
    assert reply["replica"].startswith("test-127.0.0.")
    assert reply["timestamp"].endswith("Z")


async def test_chat_with_nothing_to_say_ends_cleanly(cli: Cli) -> None:
    result = await cli("chat", stdin="")
    assert (result.code, result.out) == (EXIT_OK, "")


async def test_chat_text_too_long_is_invalid(cli: Cli) -> None:
    result = await cli("chat", stdin="x" * 5000 + "\n")
    assert result.code == EXIT_RPC
    assert result.err.startswith("error: INVALID_ARGUMENT")


async def test_stats_shows_both_endpoints(cli: Cli, mesh: Mesh) -> None:
    result = await cli("stats", "--json")
    assert result.code == EXIT_OK, result.err
    document = json.loads(result.out)
    addresses = sorted(e["address"] for e in document["endpoints"])
    assert addresses == sorted(r.address for r in mesh.replicas)
    assert {e["state"] for e in document["endpoints"]} == {"SERVING"}
    assert document["policy"] == "least_conn"


async def test_nothing_listening_is_unavailable(offline_cli: Cli) -> None:
    async with serve("127.0.0.4") as gone:
        address = gone.address
    result = await offline_cli("get", "x", "--target", f"static:///{address}", "--timeout", "1")
    assert result.code == EXIT_UNAVAILABLE
    assert result.err.split(":")[1].strip() in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    stats = await offline_cli("stats", "--target", f"static:///{address}", "--wait", "0.5")
    assert stats.code == EXIT_UNAVAILABLE
    assert json.loads(stats.out)["endpoints"][0]["address"] == address


@pytest.mark.parametrize(
    "argv",
    [
        ("get", "x", "--target", "bogus://x/y"),
        ("get", "x", "--target", "static:///"),
        ("get",),
        ("create", "--name", "n"),
        ("get", "x", "--policy", "fastest"),
        ("get", "x", "--timeout", "0"),
        ("list", "--page-size", "5000"),
        ("load", "--rps", "10"),
        ("load", "--duration", "1", "--mix", "get=x"),
        ("nope",),
        (),
    ],
)
async def test_usage_errors_exit_2(offline_cli: Cli, argv: tuple[str, ...]) -> None:
    result = await offline_cli(*argv)
    assert result.code == EXIT_USAGE
    assert result.out == ""
    assert "error" in result.err


async def test_load_runs_bounded_and_its_summary_adds_up(
    cli: Cli, mesh: Mesh, tmp_path: Path
) -> None:
    summary_path = tmp_path / "summary.json"
    result = await cli(
        "load", "--duration", "2", "--concurrency", "4", "--rps", "100", "--seed-users", "5",
        "--mix", "get=70,create=10,list=10,batch=5,chat=5", "--summary", str(summary_path),
        "--refresh", "0.2", "--policy", "round_robin", "--json",
    )  # fmt: skip
    assert result.code == EXIT_OK, result.err
    summary = json.loads(result.out)
    assert json.loads(summary_path.read_text()) == summary
    assert summary["ok"] + summary["failed"] == summary["calls"]
    assert sum(summary["errors_by_code"].values()) == summary["failed"]
    assert 100 <= summary["calls"] <= 200  # offered 100/s for 2 s
    assert summary["failed"] == 0, summary["errors_by_code"]
    shares = {a: e["share"] for a, e in summary["per_endpoint"].items()}
    assert sorted(shares) == sorted(r.address for r in mesh.replicas)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert all(share > 0.3 for share in shares.values()), shares  # round robin: about half
    assert summary["policy"] == "round_robin"
    assert summary["seeded"] == 5
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert summary["config"]["rps"] == 100.0
    assert "calls=" in result.err  # plain progress lines: stdout is not a terminal


async def test_load_where_every_call_fails_exits_by_the_error(cli: Cli) -> None:
    result = await cli(
        "load", "--duration", "0.5", "--rps", "20", "--seed-users", "0", "--mix", "get=1",
        "--token", FORGED, "--json",
    )  # fmt: skip
    assert result.code == EXIT_AUTH
    summary = json.loads(result.out)
    assert summary["ok"] == 0
    assert summary["errors_by_code"] == {"UNAUTHENTICATED": summary["calls"]}


async def test_load_seeding_needs_write_rights(cli: Cli) -> None:
    result = await cli("load", "--duration", "0.5", "--token", reader_token())
    assert result.code == EXIT_AUTH
    assert result.err.startswith("error: PERMISSION_DENIED")


async def test_load_refuses_an_unwritable_summary_before_running(cli: Cli, tmp_path: Path) -> None:
    result = await cli("load", "--duration", "5", "--summary", str(tmp_path / "no-dir" / "s.json"))
    assert result.code == EXIT_USAGE
    assert "cannot write --summary" in result.err
