"""A phone registered over TCP stays reachable (RFC 3261 §10, RFC 5626): it is called over
the connection it registered on, however long that connection is idle; once the
connection is gone, at its Contact, or with 430 Flow Failed when it registered an
RFC 5626 flow; and through the node that holds its flow when the call comes in on
another node of the cluster."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sipha.edge.server import EdgeServer
from sipha.endpoint import SessionEvent
from tests.edge.helpers import calls_through, edge_port, running_edge, sipp_destination
from tests.edge.raw import raw_peer
from tests.edge.scenarios import ANSWER, destination
from tests.endpoint.helpers import phone_config, running_phone
from tests.sipp import free_port

DOMAIN = "edge.test"
INSTANCE = '"<urn:uuid:00000000-0000-4000-8000-000000000001>"'


def register(
    contact: str,
    via: str,
    *,
    user: str = "1001",
    outbound: bool = False,
    call_id: str | None = None,
    cseq: int = 1,
    extra: str = "",
) -> bytes:
    """A REGISTER as a UA writes it (``via``: the Via lines, the UA's last)."""
    params = f";+sip.instance={INSTANCE};reg-id=1" if outbound else ""
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        via,
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <{contact}>{params}",
        "Expires: 60",
        *(["Supported: outbound, path"] if outbound else []),
        *([extra] if extra else []),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextlib.asynccontextmanager
async def tcp_ua(port: int, host: str = "127.0.0.1") -> AsyncIterator[
    tuple[asyncio.StreamReader, asyncio.StreamWriter, str]
]:  # fmt: skip
    """A TCP connection to the edge, as a phone opens one; yields its local host:port."""
    reader, writer = await asyncio.open_connection(host, port)
    local = writer.get_extra_info("sockname")
    try:
        yield reader, writer, f"{local[0]}:{local[1]}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def answer_on(reader: asyncio.StreamReader) -> str:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head.decode()


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the edge closes this (idle) connection within ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except TimeoutError:
        return False


async def binding(edge: EdgeServer, user: str = "1001") -> Any:
    found = await edge.registrar.lookup(f"sip:{user}@{DOMAIN}")
    assert len(found) == 1, found
    return found[0]


def edge_sections(**sip: Any) -> dict[str, Any]:
    return {"registrar": {"domains": [DOMAIN]}, "sip": sip} if sip else {
        "registrar": {"domains": [DOMAIN]}}  # fmt: skip


async def test_a_phone_is_called_over_its_idle_registration_connection(tmp_path: Path) -> None:
    # idle connections are closed after 1 s; the phone's stays open: it carries a binding
    async with (
        running_edge(tmp_path, **edge_sections(tcp_idle_timeout=1.0)) as edge,
        running_phone(
            phone_config("127.0.0.1:9", [{
                "id": 0, "user": "1001", "server": f"127.0.0.1:{edge_port(edge)}",
                "domain": DOMAIN, "protocol": "tcp", "expires": 60}], outbound=False),
            auto_answer=True,
        ) as (phone, rec),
        tcp_ua(edge_port(edge)) as (idle, _, _),
    ):  # fmt: skip
        await phone.wait_registered(0)
        b = await binding(edge)
        assert b.flow is not None and b.flow.transport == "tcp" and not b.path and not b.reg_id
        # the reaper ran: an idle connection without a registration is closed
        assert await closed_by_peer(idle, timeout=5.0)
        assert edge.stack.transports.flow_open(b.flow)
        opened = edge.stack.transports.stats.connections_opened
        await calls_through(tmp_path, edge, "180 200", user="1001", domain=DOMAIN)
        await rec.wait(event="session", state="disconnected")
        # the INVITE, ACK and BYE went over the registration's connection: no new one
        assert edge.stack.transports.stats.connections_opened == opened


async def test_once_its_connection_is_gone_a_tcp_phone_is_called_at_its_contact(
    tmp_path: Path,
) -> None:
    callee = free_port()
    async with (
        sipp_destination(tmp_path, destination(ANSWER), transport="tcp", port=callee),
        running_edge(tmp_path, **edge_sections()) as edge,
    ):
        async with tcp_ua(edge_port(edge)) as (reader, writer, local):
            writer.write(register(f"sip:1001@127.0.0.1:{callee};transport=tcp",
                                  f"Via: SIP/2.0/TCP {local};branch=z9hG4bK{secrets.token_hex(6)}"))  # fmt: skip
            assert (await answer_on(reader)).startswith("SIP/2.0 200 ")
        b = await binding(edge)
        assert b.flow is not None
        await wait_until(lambda: not edge.stack.transports.flow_open(b.flow))
        await calls_through(tmp_path, edge, "180 200", user="1001", domain=DOMAIN)


async def test_an_outbound_flow_that_is_gone_gets_430(tmp_path: Path) -> None:
    async with running_edge(tmp_path, **edge_sections()) as edge:
        async with tcp_ua(edge_port(edge)) as (reader, writer, local):
            writer.write(register(f"sip:1001@{local};transport=tcp",
                                  f"Via: SIP/2.0/TCP {local};branch=z9hG4bK{secrets.token_hex(6)}",
                                  outbound=True))  # fmt: skip
            ok = await answer_on(reader)
            assert ok.startswith("SIP/2.0 200 ")
            assert re.search(r"^Require: outbound\r$", ok, re.M), ok  # RFC 5626 §6
            assert re.search(r"^Contact: .*;reg-id=1\r$", ok, re.M), ok
            b = await binding(edge)
            assert b.reg_id == 1 and b.instance == INSTANCE.strip('"')
            assert len(b.path) == 1 and ";ob;fl=" in b.path[0]  # the flow, through this node
        await wait_until(lambda: not edge.stack.transports.flow_open(b.flow))
        # the UA's flow is gone: 430 (it registers a new flow), not a call to its Contact
        await calls_through(tmp_path, edge, "430", user="1001", domain=DOMAIN)


async def test_outbound_bindings_are_replaced_by_instance_and_reg_id(tmp_path: Path) -> None:
    async with running_edge(tmp_path, **edge_sections()) as edge, raw_peer() as ua:
        for port in (5070, 5072):  # the UA restarted with a new Contact and Call-ID
            via = f"Via: SIP/2.0/UDP {ua.host}:{ua.port};branch=z9hG4bK{secrets.token_hex(6)}"
            ua.send(register(f"sip:1001@{ua.host}:{port}", via, outbound=True),
                    ("127.0.0.1", edge_port(edge)))  # fmt: skip
            assert (await ua.response()).status == 200
        b = await binding(edge)  # one binding: the instance's reg-id 1
        assert b.contact == f"sip:1001@{ua.host}:5072"


async def test_an_outbound_register_through_a_proxy_without_ob_gets_439(tmp_path: Path) -> None:
    async with running_edge(tmp_path, **edge_sections()) as edge, raw_peer() as proxy:
        vias = (f"Via: SIP/2.0/UDP {proxy.host}:{proxy.port};branch=z9hG4bK{secrets.token_hex(6)}"
                f"\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK{secrets.token_hex(6)}")  # fmt: skip
        proxy.send(register("sip:1001@192.0.2.7:5060", vias, outbound=True),
                   ("127.0.0.1", edge_port(edge)))  # fmt: skip
        resp = await proxy.response()
        assert (resp.status, resp.reason) == (439, "First Hop Lacks Outbound Support")
        assert await edge.registrar.lookup(f"sip:1001@{DOMAIN}") == []
        # the same through a proxy that keeps the flow (Path with ;ob): bound
        proxy.send(register("sip:1001@192.0.2.7:5060", vias, outbound=True,
                            extra=f"Path: <sip:{proxy.host}:{proxy.port};lr;ob>"),
                   ("127.0.0.1", edge_port(edge)))  # fmt: skip
        assert (await proxy.response()).status == 200


async def test_a_call_on_another_node_reaches_the_phone_through_the_node_with_its_flow(
    tmp_path: Path, redis_url: str
) -> None:
    secret = tmp_path / "route.key"
    secret.write_text(secrets.token_hex(32))

    def node(host: str) -> dict[str, Any]:
        port = free_port(host=host)
        return {
            "sip": {"listen": [f"udp:{host}:{port}", f"tcp:{host}:{port}"],
                    "route_secret_file": str(secret)},
            "registrar": {"domains": [DOMAIN], "store": redis_url},
        }  # fmt: skip

    async with (
        running_edge(tmp_path, **node("127.0.0.2")) as a,
        running_edge(tmp_path, **node("127.0.0.3")) as b,
        running_phone(
            phone_config("127.0.0.1:9", [{
                "id": 0, "user": "1001", "server": f"127.0.0.2:{edge_port(a)}",
                "domain": DOMAIN, "protocol": "tcp", "expires": 60}]),
            auto_answer=True,
        ) as (phone, rec),
    ):  # fmt: skip
        await phone.wait_registered(0)
        bound = await binding(b)
        assert bound.reg_id and f"127.0.0.2:{edge_port(a)}" in bound.path[0]
        await calls_through(tmp_path, b, "180 200", user="1001", domain=DOMAIN)  # via 127.0.0.3
        ended = await rec.wait(event="session", state="disconnected")
        assert isinstance(ended, SessionEvent) and ended.reason == "remote hangup"
        # node B never opened a connection to the phone: only to node A
        assert not any(t.host == "127.0.0.1" for t in b.stack.transports._conns)


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
