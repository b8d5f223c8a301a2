"""RFC 3263 location against a real DNS server on loopback."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sipha.dns.locator import LocateError, Locator, parse_nameserver
from sipha.sip.transaction import Target
from sipha.sip.uri import parse_uri

from .dnsserver import DnsServer


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        server.add("edge.test", "A", "127.0.0.2", "127.0.0.3")
        server.add("_sip._udp.srv.test", "SRV", "10 0 5070 b.srv.test.", "20 0 5080 c.srv.test.")
        server.add("_sip._tcp.srv.test", "SRV", "10 0 5090 b.srv.test.")
        server.add("b.srv.test", "A", "127.0.0.5")
        server.add("c.srv.test", "A", "127.0.0.6")
        server.add(
            "naptr.test",
            "NAPTR",
            '10 50 "s" "SIP+D2T" "" _sip._tcp.srv.test.',
            '20 50 "s" "SIP+D2U" "" _sip._udp.srv.test.',
        )
        server.add("v6.test", "AAAA", "::1")
        yield server


def locator(server: DnsServer, **kw) -> Locator:
    return Locator([server.address], hosts_file=None, **kw)


def uri(text: str):
    return parse_uri(text)


async def test_a_records_are_several_proxies(dns_server):
    loc = locator(dns_server)
    targets = await loc.locate(uri("sip:edge.test:5060"), "udp")
    # the order is the DNS server's (round robin spreads phones over proxies)
    assert sorted(targets) == [Target("udp", "127.0.0.2", 5060), Target("udp", "127.0.0.3", 5060)]


async def test_explicit_port_skips_naptr_and_srv(dns_server):
    with pytest.raises(LocateError):  # srv.test itself has no A record
        await locator(dns_server).locate(uri("sip:srv.test:5099"), "udp")
    assert dns_server.queries[("srv.test", "NAPTR")] == 0
    assert dns_server.queries[("_sip._udp.srv.test", "SRV")] == 0


async def test_srv_in_priority_order_with_their_ports(dns_server):
    targets = await locator(dns_server).locate(uri("sip:srv.test"), "udp")
    assert targets == [Target("udp", "127.0.0.5", 5070), Target("udp", "127.0.0.6", 5080)]


async def test_srv_for_the_preferred_transport(dns_server):
    targets = await locator(dns_server).locate(uri("sip:srv.test"), "tcp")
    assert targets[0] == Target("tcp", "127.0.0.5", 5090)


async def test_transport_param_is_forced(dns_server):
    targets = await locator(dns_server).locate(uri("sip:srv.test;transport=tcp"), "udp")
    assert targets == [Target("tcp", "127.0.0.5", 5090)]
    assert dns_server.queries[("srv.test", "NAPTR")] == 0  # §4.1: transport given, no NAPTR


async def test_naptr_order_then_srv(dns_server):
    # NAPTR order 10 says TCP first even though the caller prefers UDP
    targets = await locator(dns_server).locate(uri("sip:naptr.test"), "udp")
    assert targets == [Target("tcp", "127.0.0.5", 5090)]


async def test_no_srv_falls_back_to_a_on_default_port(dns_server):
    targets = await locator(dns_server).locate(uri("sip:edge.test"), "tls")
    assert sorted(targets) == [Target("tls", "127.0.0.2", 5061), Target("tls", "127.0.0.3", 5061)]


async def test_aaaa(dns_server):
    assert await locator(dns_server).locate(uri("sip:v6.test:5060")) == [Target("udp", "::1", 5060)]


async def test_unknown_name_is_a_clear_error(dns_server):
    with pytest.raises(LocateError, match=r"nowhere\.test: no A/AAAA record"):
        await locator(dns_server).locate(uri("sip:nowhere.test:5060"))


async def test_answers_are_cached_for_their_ttl(dns_server):
    now = [0.0]
    loc = locator(dns_server, clock=lambda: now[0])
    for _ in range(5):
        await loc.locate(uri("sip:edge.test:5060"))
    assert dns_server.queries[("edge.test", "A")] == 1
    now[0] = dns_server.ttl + 1  # expired: asked again
    await loc.locate(uri("sip:edge.test:5060"))
    assert dns_server.queries[("edge.test", "A")] == 2


async def test_hosts_file_wins(dns_server, tmp_path: Path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.9  edge.test other.test\n")
    loc = Locator([dns_server.address], hosts_file=str(hosts))
    assert await loc.locate(uri("sip:edge.test"), "udp") == [Target("udp", "127.0.0.9", 5060)]
    assert dns_server.queries[("edge.test", "A")] == 0


async def test_numeric_host_needs_no_dns(dns_server):
    loc = locator(dns_server)
    assert await loc.locate(uri("sips:127.0.0.7")) == [Target("tls", "127.0.0.7", 5061)]
    assert sum(dns_server.queries.values()) == 0


def test_srv_weights_follow_rfc_2782():
    class R:
        def __init__(self, priority: int, weight: int, name: str) -> None:
            self.priority, self.weight, self.name = priority, weight, name

    loc = Locator(["127.0.0.1"], hosts_file=None, rng=random.Random(7))
    records = [R(1, 90, "heavy"), R(1, 10, "light"), R(0, 0, "first")]
    firsts = [loc.srv_order(records)[1].name for _ in range(2000)]  # type: ignore[attr-defined]
    assert all(loc.srv_order(records)[0].name == "first" for _ in range(50))  # type: ignore[attr-defined]
    share = firsts.count("heavy") / len(firsts)
    assert 0.85 < share < 0.95


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
    ],
)
def test_nameserver_syntax(text, expected):
    assert parse_nameserver(text) == expected


def test_bad_nameserver_is_refused():
    with pytest.raises(ValueError):
        parse_nameserver("dns.example:53")
