"""The endpoint's pure rules (back-off, config validation) and the REGISTER retry rules
against a silent registrar (a bound UDP socket that never answers) and an SRV name."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from sipha.config import ConfigError, load_config
from sipha.endpoint import ConnectionStatus, Phone, PhoneConfig
from sipha.endpoint.registration import backoff
from tests.dnsserver import DnsServer

from .helpers import (
    PASSWORD,
    REALM,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)


@pytest.mark.parametrize("failures", [1, 2, 3, 10])
def test_backoff_follows_rfc_5626_section_4_5(failures: int) -> None:
    rng = random.Random(1)
    for all_failed, base in ((True, 30.0), (False, 90.0)):
        wait = min(1800.0, base * 2**failures)
        draws = [backoff(failures, all_failed=all_failed, max_time=1800, rng=rng) for _ in range(500)]
        assert min(draws) >= wait / 2 and max(draws) <= wait
        assert max(draws) - min(draws) > wait / 4  # really random in the 50-100 % band


def test_backoff_is_capped_by_max_retry() -> None:
    assert backoff(40, all_failed=True, max_time=120, rng=random.Random()) <= 120


def test_dial_plan_prefers_the_chosen_or_first_registered_connection() -> None:
    phone = Phone(phone_config("127.0.0.1", [
        {"id": 0, "user": "1001", "server": "a.test"},
        {"id": 1, "user": "1001", "server": "b.test"},
        {"id": 2, "user": "1001", "server": "c.test", "enabled": False},
    ]))  # fmt: skip
    for c in phone.config.connection:
        phone.add_connection(c)  # not started: no registration runs, statuses are ours
    conns = {c.id: c for c in phone.connection_objects()}

    def plan(cid: int | None) -> list[int]:
        return [c.id for c in phone.dial_plan(cid)]

    conns[1].status = "registered"
    assert plan(None) == [1, 0]  # the first registered one, then the rest
    assert plan(1) == [1]  # chosen and up; 0 is not registered, so no fallback
    assert plan(0) == [1, 0]  # chosen but down: through the other, itself last
    conns[0].status = "registered"
    assert plan(None) == [0, 1] and plan(1) == [1, 0]
    with pytest.raises(LookupError, match="no enabled connection 2"):
        plan(2)


@pytest.mark.parametrize("value", [0, 40000])
def test_transaction_timeout_out_of_range_names_key_and_range(tmp_path: Path, value: int) -> None:
    path = tmp_path / "phone.toml"
    path.write_text(f"[policy]\nsip_transaction_timeout = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, PhoneConfig)
    assert str(err.value) == (
        f"{path}: policy.sip_transaction_timeout: must be 1..32000 ms "
        f"(the RFC 3261 Timer B/F is 32000), got {value}"
    )


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "phone.toml"
    path.write_text(
        '[dns]\nnameservers = ["dns.example"]\n'
        '[[connection]]\nid = 0\nuser = "1001"\nserver = "sip:x"\nprotocol = "sctp"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, PhoneConfig)
    text = str(err.value)
    assert "dns.nameservers: 'dns.example' is not ip or ip:port" in text
    assert "connection[0].server: must be host or host:port" in text
    assert "connection[0].protocol: Input should be 'udp', 'tcp' or 'tls'" in text


def registers_seen(sock: socket.socket) -> dict[str, set[str]]:
    """Distinct REGISTER transactions (CSeq values) per Call-ID that a silent UDP
    'registrar' received; retransmissions of one transaction count once."""
    seen: dict[str, set[str]] = {}
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return seen
        fields = {}
        for line in data.decode().split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        seen.setdefault(fields["call-id"], set()).add(fields["cseq"])


async def test_reg_interval_zero_does_not_resend_after_a_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, DnsServer() as dns:
        silent.bind(("127.0.0.5", 0))
        port = silent.getsockname()[1]
        cfg = phone_config(dns.address, [
            {"id": 0, "user": "1001", "server": f"127.0.0.5:{port}", "reg_interval": 0},
            {"id": 1, "user": "1001", "server": f"127.0.0.5:{port}", "reg_interval": 1},
        ], sip_transaction_timeout=500)  # fmt: skip
        async with running_phone(cfg) as (phone, rec):
            for cid in (0, 1):
                ev = await rec.wait(event="connection_status", connection=cid, status="unavailable")
                assert isinstance(ev, ConnectionStatus) and ev.reason == "408 Request Timeout"
            await asyncio.sleep(3.5)  # connection 1: 0.5 s time-out + 1 s pause per try
            seen = registers_seen(silent)
            zero, one = phone.connection_object(0), phone.connection_object(1)
            assert zero is not None and one is not None
            assert seen[zero.call_id] == {"1 REGISTER"}  # never re-sent
            assert len(seen[one.call_id]) >= 3  # kept trying, every reg_interval (1 s)


async def test_refused_tcp_port_is_retried_at_the_back_off_pace_not_in_a_storm() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, DnsServer() as dns:
        s.bind(("127.0.0.5", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        cfg = phone_config(dns.address, [{"id": 0, "user": "1001", "protocol": "tcp",
                                          "server": f"127.0.0.5:{port}", "reg_interval": 1}])  # fmt: skip
        async with running_phone(cfg) as (phone, rec):
            ev = await rec.wait(event="connection_status", status="unavailable")
            assert isinstance(ev, ConnectionStatus)
            assert ev.reason == "transport: connection refused"
            await asyncio.sleep(2.5)
            conn = phone.connection_object(0)
            assert conn is not None
            # one REGISTER, then one per reg_interval (1 s): 3 or 4 in 2.5 s, not thousands
            assert 2 <= conn.cseq <= 4, conn.cseq


async def test_srv_name_registers_on_the_srv_targets(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on("127.0.0.2")
    users = users_file(tmp_path, {"1001": PASSWORD})
    with DnsServer() as dns:
        dns.add("_sip._udp.sites.test", "SRV", f"10 0 {port} node.sites.test.")
        dns.add("node.sites.test", "A", "127.0.0.2")
        async with (
            edge_node(tmp_path, "127.0.0.2", port, redis_url, users),
            running_phone(phone_config(dns.address, [
                {"id": 0, "user": "1001", "password": PASSWORD, "server": "sites.test",
                 "domain": REALM, "reg_interval": 1},
            ])) as (phone, rec),  # fmt: skip
        ):
            ev = await rec.wait(event="connection_status", status="registered")
            assert isinstance(ev, ConnectionStatus) and ev.server == f"127.0.0.2:{port}"
            assert dns.queries[("_sip._udp.sites.test", "SRV")] == 1
            assert phone.connections[0].protocol is None  # RFC 3263 chose UDP


def test_an_ipv6_server_without_a_domain_gives_a_bracketed_aor() -> None:
    # RFC 3261 §25.1 / RFC 5118: sip:1001@[::1], never sip:1001@::1 (Kamailio answered 500)
    from sipha.endpoint.config import ConnectionConfig
    from sipha.sip.uri import parse_uri

    conn = ConnectionConfig(id=0, user="1001", server="[::1]:5091")
    assert conn.aor_domain == "[::1]"
    uri = parse_uri(f"sip:{conn.user}@{conn.aor_domain}")
    assert str(uri) == "sip:1001@[::1]"
    assert ConnectionConfig(id=1, user="1001", server="[::1]").aor_domain == "[::1]"
    assert ConnectionConfig(id=2, user="1001", server="::1", domain="x.test").aor_domain == "x.test"
