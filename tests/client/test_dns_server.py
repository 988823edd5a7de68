"""client.testing.DnsServer over real UDP and TCP on 127.0.0.1 (dnspython as the client)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from client.testing import DnsServer
from mesh.dns import SERVICE_NAME


def ask(server: DnsServer, name: str, qtype: str, *, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=2.0)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in reply.answer for rdata in rrset]


def soa(reply: dns.message.Message) -> tuple[str, int, int]:
    """Owner, TTL and minimum of the one SOA in the authority section."""
    [rrset] = reply.authority
    assert rrset.rdtype == dns.rdatatype.SOA
    return rrset.name.to_text(), rrset.ttl, rrset[0].minimum


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as running:
        yield running


def test_a_query_answers_one_record_per_address_with_the_ttl(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    reply = ask(server, SERVICE_NAME, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert {rrset.ttl for rrset in reply.answer} == {1}
    assert reply.authority == []


def test_aaaa_of_an_ipv4_name_is_empty_noerror_with_the_soa(server: DnsServer) -> None:
    server.negative_ttl = 7
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    reply = ask(server, SERVICE_NAME, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert soa(reply) == ("cluster.local.", 7, 7)


def test_an_unknown_name_is_nxdomain_with_the_soa(server: DnsServer) -> None:
    reply = ask(server, "nobody.meshdemo.svc.cluster.local", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert soa(reply) == ("cluster.local.", 1, 1)


def test_a_name_outside_the_zone_gets_the_roots_soa(server: DnsServer) -> None:
    # The SOA must own the asked name, or a resolver finds no negative TTL.
    reply = ask(server, "api.elsewhere.test", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert soa(reply)[0] == "."


def test_other_qtypes_of_a_known_name_are_empty_noerror(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    for qtype in ("MX", "TXT", "SRV"):
        reply = ask(server, SERVICE_NAME, qtype)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer == []
        assert len(reply.authority) == 1


def test_aaaa_records_come_from_ipv6_addresses(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["::1", "127.0.0.2"])
    assert addresses(ask(server, SERVICE_NAME, "AAAA")) == ["::1"]
    assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2"]
    assert server.addresses(SERVICE_NAME) == ("127.0.0.2", "::1")


def test_an_empty_publication_keeps_the_name_known(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, [])
    reply = ask(server, SERVICE_NAME, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    server.remove(SERVICE_NAME)
    assert ask(server, SERVICE_NAME, "A").rcode() == dns.rcode.NXDOMAIN
    server.remove(SERVICE_NAME)  # removing an unknown name is no error


def test_names_are_case_insensitive_with_or_without_the_trailing_dot(server: DnsServer) -> None:
    server.publish("Users.Mesh.Test", ["127.0.0.2"])
    assert addresses(ask(server, "USERS.mesh.test.", "A")) == ["127.0.0.2"]
    assert server.addresses("users.mesh.test.") == ("127.0.0.2",)
    assert server.names() == ("users.mesh.test.",)
    assert server.count("A", "users.MESH.test") == 1


def test_duplicates_are_published_once_in_order(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.3", "127.0.0.2", "127.0.0.3"])
    assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.3", "127.0.0.2"]


def test_changes_while_serving_show_in_the_next_answer(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2"]
    server.publish(SERVICE_NAME, ["127.0.0.2", "127.0.0.5"])
    assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2", "127.0.0.5"]
    server.ttl = 9
    assert {rrset.ttl for rrset in ask(server, SERVICE_NAME, "A").answer} == {9}


def test_concurrent_changes_never_give_a_torn_answer(server: DnsServer) -> None:
    sets = [["127.0.0.2", "127.0.0.3"], ["127.0.0.4", "127.0.0.5", "127.0.0.6"]]
    stop = threading.Event()

    def flip() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            server.publish(SERVICE_NAME, sets[n % 2])
            n += 1

    writer = threading.Thread(target=flip)
    writer.start()
    try:
        for _ in range(100):
            assert addresses(ask(server, SERVICE_NAME, "A")) in sets
    finally:
        stop.set()
        writer.join()


def test_servfail_switch(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    server.servfail = True
    assert ask(server, SERVICE_NAME, "A").rcode() == dns.rcode.SERVFAIL
    server.servfail = False
    assert ask(server, SERVICE_NAME, "A").rcode() == dns.rcode.NOERROR


def test_the_query_log_counts_by_name_and_qtype(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    ask(server, SERVICE_NAME, "A")
    ask(server, SERVICE_NAME, "A")
    ask(server, SERVICE_NAME, "AAAA")
    ask(server, "other.test", "A")
    fqdn = SERVICE_NAME + "."
    assert server.queries == [(fqdn, "A"), (fqdn, "A"), (fqdn, "AAAA"), ("other.test.", "A")]
    assert server.query_counts()[(fqdn, "A")] == 2
    assert server.count("A") == 3
    assert server.count("AAAA", SERVICE_NAME) == 1
    assert server.count() == 4
    server.clear_queries()
    assert server.queries == []


def test_a_dnspython_resolver_sees_the_negative_ttl(server: DnsServer) -> None:
    server.negative_ttl = 5
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    answer = resolver.resolve(SERVICE_NAME, "AAAA", raise_on_no_answer=False)
    assert answer.chaining_result.minimum_ttl == 5


def test_stop_and_start_again_on_the_same_port() -> None:
    server = DnsServer()
    server.start()
    try:
        server.publish(SERVICE_NAME, ["127.0.0.2"])
        port = server.port
        assert port != 0
        server.stop()
        assert not server.running
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query(SERVICE_NAME, "A"), "127.0.0.1", 0.3, port)
        server.start()
        assert server.port == port
        assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2"]
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.stop()
    server.stop()  # idempotent


def test_a_given_port_is_used() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with DnsServer(port=port) as server:
        assert server.port == port
        assert server.address == f"127.0.0.1:{port}"


def test_a_taken_port_fails_to_start() -> None:
    with DnsServer() as first:
        second = DnsServer(port=first.port)
        with pytest.raises(OSError, match="in use"):
            second.start()
        assert not second.running


def test_tcp_answers_on_the_same_port() -> None:
    with DnsServer(tcp=True) as server:
        server.publish(SERVICE_NAME, ["127.0.0.2", "127.0.0.3"])
        assert addresses(ask(server, SERVICE_NAME, "A", tcp=True)) == ["127.0.0.2", "127.0.0.3"]
        assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2", "127.0.0.3"]
        server.stop()
        server.start()  # both protocols again, same port
        assert ask(server, SERVICE_NAME, "A", tcp=True).rcode() == dns.rcode.NOERROR


def test_close_is_fast_and_leaves_no_thread_and_no_socket() -> None:
    before = set(threading.enumerate())
    with DnsServer(tcp=True) as server:
        ask(server, "x.test", "A")
        ask(server, "x.test", "A", tcp=True)
        port = server.port
        began = time.monotonic()
    assert time.monotonic() - began < 0.5  # the serving threads poll every 50 ms
    assert set(threading.enumerate()) <= before
    # Both ports are free again: binding them succeeds.
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_target_names_the_server_and_the_name() -> None:
    server = DnsServer(port=5353)
    assert server.target(SERVICE_NAME + ".", 50051) == (
        "dns://127.0.0.1:5353/users.meshdemo.svc.cluster.local:50051"
    )
    assert DnsServer(host="::1", port=5353).target("a.test", 1) == "dns://[::1]:5353/a.test:1"
    assert "stopped" in repr(server)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "localhost", ""]
)
def test_only_loopback_ip_addresses_can_be_published(server: DnsServer, address: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|not an IP"):
        server.publish(SERVICE_NAME, ["127.0.0.2", address])
    assert server.addresses(SERVICE_NAME) == ()  # nothing of a rejected set is published


@pytest.mark.parametrize(
    "options",
    [{"ttl": -1}, {"negative_ttl": -1}, {"port": 70000}, {"host": "10.0.0.1"}, {"zone": ""}],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"TTL|port|loopback|empty"):
        DnsServer(**options)  # type: ignore[arg-type]


def test_an_empty_name_is_rejected(server: DnsServer) -> None:
    with pytest.raises(ValueError, match="empty"):
        server.publish(".", ["127.0.0.2"])


def test_rcodes_override_one_query_type(server: DnsServer) -> None:
    server.publish(SERVICE_NAME, ["127.0.0.2"])
    server.rcodes = {"AAAA": "NXDOMAIN"}
    denied = ask(server, SERVICE_NAME, "AAAA")
    assert denied.rcode() == dns.rcode.NXDOMAIN
    assert soa(denied)[0] == "cluster.local."
    assert addresses(ask(server, SERVICE_NAME, "A")) == ["127.0.0.2"]
    server.rcodes = {"*": "REFUSED"}
    assert ask(server, SERVICE_NAME, "A").rcode() == dns.rcode.REFUSED
    assert ask(server, SERVICE_NAME, "AAAA").rcode() == dns.rcode.REFUSED
    server.rcodes = {}
    assert ask(server, SERVICE_NAME, "AAAA").rcode() == dns.rcode.NOERROR
