"""The registrar cannot be turned into an amplifier or filled up (issue 11, findings 2, 9).

Contacts that point back at the edge are refused; an AOR holds at most max_contacts
bindings (the oldest dropped, or 403); one INVITE forks into at most max_branches
branches and never back to the edge; an open registrar holds at most max_aors AORs and
says at start-up that it is open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from sipha.sip import Request, parse
from sipha.stack import SipStack
from sipha.store.base import Binding
from tests.edge.helpers import running_edge
from tests.edge.raw import RawPeer, raw_peer, raw_peers, request
from tests.edge.test_registrar import REALM, Registering


async def invites_at(peers: list[RawPeer], wait: float = 1.0) -> int:
    """How many of ``peers`` received an INVITE within ``wait`` seconds."""
    await asyncio.sleep(wait)
    got = 0
    for p in peers:
        if any(isinstance(m := parse(d), Request) and m.method == "INVITE" for d in p.received()):
            got += 1
    return got


async def test_contacts_pointing_back_at_the_edge_are_refused(tmp_path: Path) -> None:
    async with (
        running_edge(tmp_path, registrar={"domains": [REALM]}, sip={"aliases": ["edge.example.test"]}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):  # fmt: skip
        port = edge.stack.local().port
        ua = Registering(stack, port)
        for contact in (
            f"<sip:alice@{REALM}:{port};maddr=127.0.0.1>",  # the exploit
            f"<sip:alice@127.0.0.1:{port}>",
            f"<sip:alice@{REALM}>",  # a served domain
            f"<sip:alice@edge.example.test:{port}>",  # an alias
            f"<sip:alice@localhost:{port}>",
        ):
            resp = await ua.send(ua.request(contact=contact))
            assert (resp.status, resp.reason) == (403, "Contact Points To This Edge"), contact
        assert await edge.registrar.lookup(f"sip:alice@{REALM}") == []
        # a binding that resolves to the edge anyway (written by an older version, or a
        # name whose DNS points here) is skipped when forking: the INVITE does not come back
        await edge.store.update_bindings(f"sip:alice@{REALM}", lambda _: [
            Binding(contact=f"sip:alice@127.0.0.1:{port}", expires_at=time.time() + 60)])  # fmt: skip
        before = edge.stack.stats.requests_in
        async with raw_peer() as caller:
            caller.send(request("INVITE", f"sip:alice@{REALM}", caller), ("127.0.0.1", port))
            resp = await caller.response()
        assert resp.status >= 400
        assert edge.stack.stats.requests_in - before == 1  # nothing looped back
        assert edge.counters.get("fork_to_self_refused") == 1


async def test_max_contacts_drops_the_oldest_and_the_fork_reaches_only_those(tmp_path: Path) -> None:
    async with (
        raw_peers([f"127.0.0.{20 + i}" for i in range(15)]) as peers,
        running_edge(tmp_path, registrar={"domains": [REALM]}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        port = edge.stack.local().port
        ua = Registering(stack, port)
        for p in peers:  # 15 contacts, one REGISTER each: the default cap is 10
            resp = await ua.send(ua.request(contact=f"<sip:alice@{p.host}:{p.port}>"))
            assert resp.status == 200
        bindings = await edge.registrar.lookup(f"sip:alice@{REALM}")
        assert sorted(b.contact for b in bindings) == sorted(
            f"sip:alice@{p.host}:{p.port}" for p in peers[5:]
        )  # the five refreshed longest ago are gone
        async with raw_peer() as caller:
            caller.send(request("INVITE", f"sip:alice@{REALM}", caller), ("127.0.0.1", port))
            assert await invites_at(peers) == 10
        # one REGISTER with more contacts than the cap is refused whole
        many = ", ".join(f"<sip:bob@127.0.0.1:{6000 + i}>" for i in range(11))
        resp = await ua.send(ua.request(contact=many))
        assert (resp.status, resp.reason) == (403, "Too Many Contacts")


async def test_max_contacts_reject_and_max_branches(tmp_path: Path) -> None:
    reg = {"domains": [REALM], "max_contacts": 5, "max_contacts_action": "reject"}
    async with (
        raw_peers([f"127.0.0.{40 + i}" for i in range(6)]) as peers,
        running_edge(tmp_path, registrar=reg, sip={"max_branches": 3}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        port = edge.stack.local().port
        ua = Registering(stack, port)
        codes = [
            (await ua.send(ua.request(contact=f"<sip:alice@{p.host}:{p.port}>"))).status
            for p in peers
        ]
        assert codes == [200] * 5 + [403]
        async with raw_peer() as caller:
            caller.send(request("INVITE", f"sip:alice@{REALM}", caller), ("127.0.0.1", port))
            assert await invites_at(peers) == 3  # sip.max_branches
        assert edge.counters.get("fork_capped", 0) >= 1


async def test_open_registrar_warns_and_stops_at_max_aors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sipha.edge.registrar"):
        async with (
            running_edge(tmp_path, registrar={"domains": [REALM], "max_aors": 5}) as edge,
            SipStack(["udp:127.0.0.1:0"]) as stack,
        ):
            port = edge.stack.local().port
            codes = []
            for i in range(8):
                ua = Registering(stack, port, user=f"u{i}")
                codes.append((await ua.send(ua.request())).status)
            assert codes == [200] * 5 + [503] * 3
            assert await edge.store.count_aors() == 5
            again = Registering(stack, port, user="u0")  # a known AOR may still refresh
            assert (await again.send(again.request())).status == 200
    assert any("REGISTRAR IS OPEN" in r.getMessage() for r in caplog.records)
