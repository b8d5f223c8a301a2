"""Geo-redundancy: two sites at once. Connection 0 registers to a sipha edge on 127.0.0.2,
connection 1 to Kamailio (Debian) on 127.0.0.4, both with digest auth. Kamailio is killed
and restarted; the phone reports the site going and coming, and dials around it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sipha.endpoint import ConnectionStatus
from tests.dnsserver import DnsServer

from .helpers import (
    PASSWORD,
    REALM,
    edge_node,
    free_port_on,
    kamailio_site,
    needs_kamailio,
    phone_config,
    running_phone,
    users_file,
)

EDGE, KAM = "127.0.0.2", "127.0.0.4"


@needs_kamailio
async def test_site_loss_and_return_with_dial_around(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(EDGE, KAM)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    conns = [
        {"id": 0, "user": "1001", "password": PASSWORD, "server": f"{REALM}:{port}",
         "protocol": "udp", "reg_interval": 1, "expires": 60},
        {"id": 1, "user": "1001", "password": PASSWORD, "server": f"{KAM}:{port}",
         "protocol": "udp", "reg_interval": 1, "expires": 60},
    ]  # fmt: skip
    callee = [{"id": 0, "user": "1002", "password": PASSWORD, "server": f"{REALM}:{port}",
               "protocol": "udp", "reg_interval": 1, "expires": 60}]  # fmt: skip
    with DnsServer() as dns:
        dns.add(REALM, "A", EDGE)
        async with (
            edge_node(tmp_path, EDGE, port, redis_url, users),
            kamailio_site(tmp_path, KAM, port) as kam,
            running_phone(
                phone_config(dns.address, conns, keepalive_interval=1, udp_keepalive="options")
            ) as (phone, rec),
            running_phone(phone_config(dns.address, callee), auto_answer=True) as (bob, _),
        ):
            # both sites at once, same user name, equal standing
            await phone.wait_registered(0)
            await phone.wait_registered(1)
            await bob.wait_registered(0)
            views = {c.id: c for c in phone.connections}
            assert views[1].server_in_use == f"{KAM}:{port}" and views[1].status == "registered"
            assert views[0].server_in_use == f"{EDGE}:{port}"

            t_kill = time.time()
            kam.kill()
            lost = await rec.wait(timeout=8, event="connection_status", connection=1,
                                  status="unavailable")  # fmt: skip
            assert isinstance(lost, ConnectionStatus)
            detected = lost.ts - t_kill
            print(
                f"measured: Kamailio site killed, connection 1 unavailable after {detected:.2f} s"
            )
            # keep-alive every 1 s (±20 %) + a 1 s OPTIONS transaction time-out
            assert detected < 1.2 + 1.0 + 0.5, detected
            assert lost.reason == "keep-alive: OPTIONS 408 Request Timeout"
            assert phone.connections[0].status == "registered"

            # dialling through the lost site goes out on the other one
            session = await phone.dial("1002", connection_id=1)
            await session.wait_for("established", 5)
            assert session.connection == 0
            await session.hangup()

            async with kamailio_site(tmp_path, KAM, port):
                back = await rec.wait(timeout=10, after=lost.ts, event="connection_status",
                                      connection=1, status="registered")  # fmt: skip
                assert back.ts > lost.ts
                print(
                    f"measured: Kamailio back, connection 1 registered {back.ts - lost.ts:.2f} s after the loss"
                )


@needs_kamailio
async def test_udp_crlf_keepalives_reach_the_registrar(tmp_path: Path) -> None:
    """``udp_keepalive = "crlf"``: bare double-CRLF datagrams (RFC 5626 §4.4.1 without
    STUN), no OPTIONS. Kamailio at debug 3 logs each as a "probing packet"."""
    port = free_port_on(KAM)
    conns = [{"id": 0, "user": "1001", "password": PASSWORD, "server": f"{KAM}:{port}",
              "protocol": "udp", "reg_interval": 1, "expires": 60}]  # fmt: skip
    with DnsServer() as dns:
        async with (
            kamailio_site(tmp_path, KAM, port, debug=3) as kam,
            running_phone(
                phone_config(dns.address, conns, keepalive_interval=0.5, udp_keepalive="crlf")
            ) as (phone, _),
        ):
            await phone.wait_registered(0)
            ping, options = "probing packet received from 127.0.0.1", "method:  <OPTIONS>"
            text = kam.log.read_text()
            pings, probes = text.count(ping), text.count(options)
            await asyncio.sleep(2.5)  # 5 intervals of 0.5 s ± 20 %: 4 to 6 pings
            text = kam.log.read_text()
            assert 3 <= text.count(ping) - pings <= 7, text.count(ping) - pings
            assert text.count(options) == probes  # CRLF only: no OPTIONS keep-alive
            assert phone.connections[0].status == "registered"
