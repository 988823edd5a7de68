"""Names answered on the machine itself, before any DNS query: localhost and the hosts file.

``dns:///name`` targets without a DNS server in the authority look here first,
as the C library does (``files`` before ``dns`` in nsswitch.conf), so that
``dns:///localhost:50051`` never asks the machine's resolver, which may be off
the machine. dnspython alone reads only resolv.conf, never /etc/hosts.

The rules, in order:

1. A name listed in the hosts file resolves to every address of every line
   that lists it, as canonical name or alias, in file order (glibc's
   getaddrinfo does the same). Matching ignores case and a trailing dot.
2. ``localhost`` and every ``*.localhost`` name are loopback (RFC 6761 §6.3)
   and are never sent to DNS. Their addresses are the loopback addresses the
   hosts file gives ``localhost`` (an entry for the exact name wins), else
   ``127.0.0.1`` and ``::1``. An entry that maps such a name off loopback is
   ignored: RFC 6761 makes them loopback whatever a file says.

Why the hosts file wins for localhost: it is what every other program on the
machine (curl, grpcio's native resolver, the C library) answers, so the
client dials the same addresses a person checking with those tools sees. On
a machine whose hosts file lists only ``127.0.0.1 localhost``, localhost is
IPv4 only, matching servers that bind 127.0.0.1 (this service's default).
Without a usable entry both loopback families are tried, as RFC 6761 allows.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DEFAULT_HOSTS_FILE", "LOOPBACK", "local_addresses", "parse_hosts"]

_log = logging.getLogger(__name__)

DEFAULT_HOSTS_FILE = Path("/etc/hosts")
#: localhost's addresses when the hosts file gives it no loopback address.
LOOPBACK = ("127.0.0.1", "::1")


def _key(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _is_localhost(key: str) -> bool:
    return key == "localhost" or key.endswith(".localhost")


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def parse_hosts(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Name -> addresses from hosts-file lines (``IP name [alias...]``, ``#`` comments).

    Lines whose first field is not an IP address are skipped, as the C
    library skips them. Names are lower case without a trailing dot.
    """
    hosts: dict[str, list[str]] = {}
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            found = hosts.setdefault(_key(name), [])
            if address not in found:
                found.append(address)
    return {name: tuple(addresses) for name, addresses in hosts.items()}


def _read_hosts(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """The entries of the hosts file at ``path``; none if it is missing or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        _log.debug("hosts file %s not read: %s", path, exc)
        return {}
    return parse_hosts(text.splitlines())


def local_addresses(
    name: str, hosts_file: str | os.PathLike[str] = DEFAULT_HOSTS_FILE
) -> tuple[str, ...] | None:
    """The addresses of ``name`` known without DNS, or None when DNS must be asked.

    Args:
        name: A host name (not an IP literal).
        hosts_file: The hosts file to read (read on every call).
    """
    key = _key(name)
    hosts = _read_hosts(hosts_file)
    if not _is_localhost(key):
        return hosts.get(key)
    for candidate in (key, "localhost"):
        loopback = tuple(a for a in hosts.get(candidate, ()) if _is_loopback(a))
        if loopback:
            return loopback
    return LOOPBACK
