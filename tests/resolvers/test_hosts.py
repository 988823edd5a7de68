"""client._hosts: localhost (RFC 6761) and hosts-file names, from temporary hosts files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from client._hosts import LOOPBACK, local_addresses, parse_hosts

DEBIAN_LIKE = """\
# The file as Debian writes it, plus a few names of our own.
127.0.0.1\tlocalhost
127.0.1.1\tlaptop.example laptop
::1     localhost ip6-localhost ip6-loopback   # IPv6 loopback
ff02::1 ip6-allnodes

127.0.0.2 users.mesh users-0   # first replica
127.0.0.3 Users.Mesh. users-1
127.0.0.2 users.mesh
not-an-ip broken.entry
127.0.0.9
"""


@pytest.fixture
def hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text(DEBIAN_LIKE)
    return path


def test_parse_keeps_every_address_of_every_line_in_order() -> None:
    entries = parse_hosts(DEBIAN_LIKE.splitlines())
    assert entries["users.mesh"] == ("127.0.0.2", "127.0.0.3")  # duplicate line once
    assert entries["users-0"] == ("127.0.0.2",)
    assert entries["users-1"] == ("127.0.0.3",)
    assert entries["localhost"] == ("127.0.0.1", "::1")
    assert entries["ip6-loopback"] == ("::1",)
    assert entries["laptop"] == ("127.0.1.1",)


def test_parse_skips_comments_blank_lines_and_malformed_lines() -> None:
    entries = parse_hosts(DEBIAN_LIKE.splitlines())
    assert "broken.entry" not in entries
    assert "#" not in "".join(entries)
    assert not any(name.startswith(("ipv6", "first", "the")) for name in entries)
    assert parse_hosts(["", "   ", "# only a comment", "127.0.0.1"]) == {}


def test_a_hosts_name_resolves_to_all_its_addresses(hosts: Path) -> None:
    assert local_addresses("users.mesh", hosts) == ("127.0.0.2", "127.0.0.3")
    assert local_addresses("USERS.mesh.", hosts) == ("127.0.0.2", "127.0.0.3")
    assert local_addresses("users-1", hosts) == ("127.0.0.3",)  # an alias


def test_an_unknown_name_is_left_to_dns(hosts: Path) -> None:
    assert local_addresses("api.mesh.test", hosts) is None
    assert local_addresses("broken.entry", hosts) is None


def test_localhost_takes_the_hosts_files_loopback_addresses(hosts: Path) -> None:
    assert local_addresses("localhost", hosts) == ("127.0.0.1", "::1")
    assert local_addresses("LocalHost.", hosts) == ("127.0.0.1", "::1")


def test_localhost_ipv4_only_when_the_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    assert local_addresses("localhost", path) == ("127.0.0.1",)


@pytest.mark.parametrize("content", [None, "", "127.0.0.2 other\n", "10.1.2.3 localhost\n"])
def test_localhost_is_loopback_without_a_usable_entry(tmp_path: Path, content: str | None) -> None:
    # Missing file, empty file, no entry, or an entry off loopback (RFC 6761 wins).
    path = tmp_path / "hosts"
    if content is not None:
        path.write_text(content)
    assert local_addresses("localhost", path) == LOOPBACK == ("127.0.0.1", "::1")


def test_subdomains_of_localhost_are_loopback(hosts: Path, tmp_path: Path) -> None:
    assert local_addresses("users.localhost", hosts) == ("127.0.0.1", "::1")
    assert local_addresses("a.b.localhost.", tmp_path / "missing") == LOOPBACK
    own = tmp_path / "own"
    own.write_text("127.0.0.5 api.localhost\n127.0.0.1 localhost\n")
    assert local_addresses("api.localhost", own) == ("127.0.0.5",)  # its own entry wins
    assert local_addresses("web.localhost", own) == ("127.0.0.1",)


def test_a_name_merely_ending_in_localhost_is_not_local(tmp_path: Path) -> None:
    assert local_addresses("notlocalhost", tmp_path / "missing") is None
    assert local_addresses("localhost.example", tmp_path / "missing") is None


def test_an_unreadable_hosts_file_has_no_entries(tmp_path: Path) -> None:
    assert local_addresses("users.mesh", tmp_path) is None  # a directory
    assert local_addresses("localhost", tmp_path) == LOOPBACK
