"""Phone-to-phone calls through two sipha edge nodes behind one DNS name (shared Redis),
with digest auth: registration, dial, ringing/answer, hold/retrieve, hang-up, and the
SDK's retry rules when a node freezes or dies."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipha.endpoint import ConnectionStatus, SessionEvent
from tests.dnsserver import DnsServer

from .helpers import (
    PASSWORD,
    REALM,
    conn,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)

A, B = "127.0.0.2", "127.0.0.3"


async def test_register_call_hold_retrieve_hangup(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A, B)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            edge_node(tmp_path, B, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (alice, arec),
            running_phone(phone_config(dns.address, [conn("1002", port)]), auto_answer=True) as (
                _bob,
                brec,
            ),
        ):
            for rec in (arec, brec):
                ev = await rec.wait(event="connection_status", status="registered")
                assert isinstance(ev, ConnectionStatus) and ev.reason == "200 OK"
                assert ev.server.rsplit(":", 1)[0] in (A, B)
            session = await alice.dial("1002")
            await session.wait_for("established", 10)
            states = [e.state for e in arec.sessions(session.id)]
            assert states == ["in_progress", "ringing", "established"]
            inbound = await brec.wait(event="session", state="established")
            assert isinstance(inbound, SessionEvent) and inbound.direction == "inbound"
            assert inbound.call_id == session.call_id

            await session.hold()
            assert session.state == "held"
            await brec.wait(event="session", state="held", reason="remote hold")
            await session.retrieve()
            assert session.state == "established"

            await session.hangup()
            assert session.state == "disconnected" and session.reason == "local hangup"
            far = await brec.wait(event="session", state="disconnected")
            assert isinstance(far, SessionEvent) and far.reason == "remote hangup"


async def test_wrong_password_is_reported_as_401_after_auth(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port, password="wrong")])) as (
                _phone,
                rec,
            ),
        ):
            ev = await rec.wait(event="connection_status", status="unavailable")
            assert isinstance(ev, ConnectionStatus) and ev.reason == "401 after auth"


async def test_second_inbound_call_rings_too(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD, "1003": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (alice, _),
            running_phone(phone_config(dns.address, [conn("1003", port)])) as (carol, _),
            running_phone(phone_config(dns.address, [conn("1002", port)])) as (bob, brec),
        ):
            for p in (alice, carol, bob):
                await p.wait_registered(0)
            first = await alice.dial("1002")
            ring1 = await brec.wait(event="session", state="ringing")
            bob.phone_sessions[ring1.session].answer()  # type: ignore[union-attr]
            await first.wait_for("established")
            second = await carol.dial("1002")
            await second.wait_for("ringing")  # not dropped, not busy: the app decides
            ring2 = [e for e in brec.events if isinstance(e, SessionEvent) and e.state == "ringing"]
            assert len(ring2) == 2 and ring2[1].call_id == second.call_id
            bob.phone_sessions[ring2[1].session].reject(486)
            await second.wait_for("disconnected")
            assert second.reason == "486 Busy Here"
            assert first.state == "established"
            await first.hangup()


async def test_caller_cancel_while_ringing(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (alice, _),
            running_phone(phone_config(dns.address, [conn("1002", port)])) as (bob, brec),
        ):
            await alice.wait_registered(0)
            await bob.wait_registered(0)
            session = await alice.dial("1002")
            await session.wait_for("ringing")
            await session.hangup()
            await session.wait_for("disconnected")
            assert session.reason == "cancelled"
            far = await brec.wait(event="session", state="disconnected")
            assert far.reason == "cancelled by the caller"  # type: ignore[union-attr]


async def test_disable_enable_remove_connection(tmp_path: Path, redis_url: str) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (phone, rec),
        ):
            await phone.wait_registered(0)
            await phone.disable_connection(0)
            ev = await rec.wait(event="connection_status", status="disabled")
            assert phone.connections[0].status == "disabled" and not phone.connections[0].enabled
            phone.enable_connection(0)
            back = await rec.wait(after=ev.ts, event="connection_status", status="registered")
            assert back.ts > ev.ts
            await phone.remove_connection(0)
            await rec.wait(event="connection_status", status="removed")
            assert phone.connections == ()
            with pytest.raises(LookupError, match="no enabled connection 0"):
                await phone.dial("1002", connection_id=0)
