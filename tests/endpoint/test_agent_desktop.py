"""The SIP Endpoint SDK's agent-desktop rules with several calls and several sites
(geo-redundancy page): other calls go on hold when one is placed or answered, a site
known to be down is not waited for, inbound calls arrive on the second site when the
first is gone, and a disconnection says whether the site was down.

Sites are real processes: ``sipha edge`` nodes on 127.0.0.2/.3, Kamailio (Debian) on
127.0.0.4; the held call's far end is a SIPp scenario behind the edge."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sipha.endpoint import ConnectionUnavailable, Phone, SessionEvent
from tests.dnsserver import DnsServer
from tests.edge.scenarios import SDP, destination, reply
from tests.sipp import free_port, needs_sipp, ok_to_last, sipp_background

from .helpers import (
    PASSWORD,
    REALM,
    Node,
    Recorder,
    conn,
    edge_node,
    free_port_on,
    kamailio_site,
    needs_kamailio,
    phone_config,
    running_phone,
    users_file,
)

A, B, KAM = "127.0.0.2", "127.0.0.3", "127.0.0.4"
TIMEOUT_MS = 1000  # sip_transaction_timeout in these tests


def reinvite_answered(direction: str, var: str) -> str:
    """A SIPp step: receive a re-INVITE whose SDP says ``a=<direction>`` (the call fails
    otherwise) and answer 200 with SDP, then its ACK."""
    answer = {"sendonly": "recvonly"}.get(direction, "sendrecv")
    ok = ok_to_last(
        extra="Contact: <sip:dest@[local_ip]:[local_port];transport=[transport]>\n"
              "      Content-Type: application/sdp\n      ",
        body=f"{SDP}\n      a={answer}",
    )  # fmt: skip
    return f"""
  <recv request="INVITE">
    <action><ereg regexp="a={direction}" search_in="body" check_it="true" assign_to="{var}"/></action>
  </recv>
  <Reference variables="{var}"/>
  {ok}
  <recv request="ACK"/>"""


# answered, then held (a dial), retrieved, held again (an answer), hung up
HELD_CALL = destination(f"""
  {reply("200 OK", sdp=True, rrs=True)}
  <recv request="ACK"/>
  {reinvite_answered("sendonly", "h1")}
  {reinvite_answered("sendrecv", "r1")}
  {reinvite_answered("sendonly", "h2")}
  <recv request="BYE"/>
  {ok_to_last("end")}
""")


def received_invite_directions(message_file: Path) -> list[str]:
    """The SDP direction of every INVITE SIPp received, in order (from -trace_msg)."""
    text = message_file.read_text(errors="replace")
    out = []
    for block in re.split(r"\n-{20,}[^\n]*\n", text):
        if "message received" in block and re.search(r"^INVITE sip:", block, re.M):
            found = re.search(r"^a=(sendonly|sendrecv|recvonly|inactive)\s*$", block, re.M)
            out.append(found.group(1) if found else "sendrecv")
    return out


def session_events(rec: Recorder, **match: Any) -> list[SessionEvent]:
    return [e for e in rec.events if isinstance(e, SessionEvent)
            and all(getattr(e, k) == v for k, v in match.items())]  # fmt: skip


@needs_sipp
async def test_dial_and_answer_put_the_other_call_on_hold_first(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port_on(A)
    ivr_port = free_port()
    scenario = tmp_path / "held.xml"
    scenario.write_text(HELD_CALL)
    messages = tmp_path / "held-messages.log"
    pool = {"name": "ivr", "match": "^sip:ivr@", "probe_interval": 5.0,
            "destination": [{"uri": f"sip:127.0.0.1:{ivr_port}"}]}  # fmt: skip
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            sipp_background("-sf", str(scenario), "-i", "127.0.0.1", "-p", str(ivr_port),
                            "-trace_msg", "-message_file", str(messages), timeout=60),
            edge_node(tmp_path, A, port, redis_url, users, [pool]),
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (alice, arec),
            running_phone(phone_config(dns.address, [conn("1002", port)]), auto_answer=True)
            as (bob, brec),
        ):  # fmt: skip
            await alice.wait_registered(0)
            await bob.wait_registered(0)
            ivr = await alice.dial("ivr")
            await ivr.wait_for("established", 10)

            # dial: the IVR call is held (its re-INVITE answered) before the INVITE goes out
            second = await alice.dial("1002")
            await second.wait_for("established", 10)
            held = session_events(arec, session=ivr.id, state="held")
            assert len(held) == 1 and held[0].reason == f"held for call {second.id}"
            started = session_events(arec, session=second.id, state="in_progress")
            assert held[0].ts <= started[0].ts, (held[0].ts, started[0].ts)
            assert ivr.state == "held" and ivr.held
            await second.hangup()
            await ivr.retrieve()
            assert ivr.state == "established"

            # answer: the 200 OK to bob's call waits for the IVR call's hold
            inbound = await bob.dial("1001")
            ringing = await arec.wait(event="session", state="ringing", direction="inbound")
            assert isinstance(ringing, SessionEvent)
            assert ivr.state == "established"  # ringing holds nothing: the app decides
            alice.phone_sessions[ringing.session].answer()
            await inbound.wait_for("established", 10)
            held = session_events(arec, session=ivr.id, state="held")
            assert len(held) == 2 and held[1].reason == f"held for call {ringing.session}"
            answered = session_events(brec, session=inbound.id, state="established")
            assert held[1].ts <= answered[0].ts, (held[1].ts, answered[0].ts)

            await inbound.hangup()
            await ivr.hangup()
            assert ivr.reason == "local hangup"
        # what the IVR's far end saw: hold, retrieve, hold, each before the next call
        assert received_invite_directions(messages) == [
            "sendrecv", "sendonly", "sendrecv", "sendonly"
        ]  # fmt: skip


async def test_hold_others_false_leaves_the_other_call_alone(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port_on(A)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD, "1003": PASSWORD})
    with DnsServer() as dns:
        dns.add(REALM, "A", A)
        async with (
            edge_node(tmp_path, A, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1001", port)], hold_others=False))
            as (alice, arec),
            running_phone(phone_config(dns.address, [conn("1002", port)]), auto_answer=True)
            as (bob, brec),
            running_phone(phone_config(dns.address, [conn("1003", port)]), auto_answer=True)
            as (carol, _),
        ):  # fmt: skip
            for p in (alice, bob, carol):
                await p.wait_registered(0)
            first = await alice.dial("1002")
            await first.wait_for("established", 10)
            second = await alice.dial("1003")
            await second.wait_for("established", 10)
            assert first.state == "established" and not session_events(arec, state="held")
            assert not session_events(brec, state="held")  # no re-INVITE reached bob
            await first.hangup()
            await second.hangup()


@contextlib.asynccontextmanager
async def two_sites(
    tmp_path: Path, redis_url: str, **policy: Any
) -> AsyncIterator[tuple[Node, Node, Phone, Recorder, Phone]]:
    """Edge nodes A (site 0) and B (site 1), sharing Redis; alice has a connection to
    each, bob (auto-answer) to B only."""
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    sites = [conn("1001", port, server=f"{A}:{port}", domain=REALM),
             conn("1001", port, id=1, server=f"{B}:{port}", domain=REALM)]  # fmt: skip
    with DnsServer() as dns:
        async with (
            edge_node(tmp_path, A, port, redis_url, users) as na,
            edge_node(tmp_path, B, port, redis_url, users) as nb,
            running_phone(phone_config(dns.address, [conn("1002", port, server=f"{B}:{port}",
                                                           domain=REALM)]), auto_answer=True)
            as (bob, _),
        ):  # fmt: skip
            await bob.wait_registered(0)
            try:
                async with running_phone(
                    phone_config(dns.address, sites, sip_transaction_timeout=TIMEOUT_MS, **policy)
                ) as (alice, arec):
                    yield na, nb, alice, arec, bob
            finally:
                na.thaw()


async def test_dial_through_a_site_known_down_goes_out_on_the_other_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    async with two_sites(tmp_path, redis_url, keepalive_interval=0.5) as (na, _, alice, arec, _):
        await alice.wait_registered(0)
        await alice.wait_registered(1)
        na.kill()
        lost = await arec.wait(event="connection_status", connection=0, status="unavailable")
        # wait_registered no longer sleeps out its time-out: it says why, at once
        t0 = time.monotonic()
        with pytest.raises(ConnectionUnavailable) as err:
            await alice.wait_registered(0, timeout=10)
        assert time.monotonic() - t0 < 0.05
        assert err.value.connection == 0 and err.value.reason == lost.reason  # type: ignore[union-attr]

        t0 = time.time()
        session = await alice.dial("1002", connection_id=0)
        await session.wait_for("established", 5)
        out = session_events(arec, session=session.id, state="in_progress")
        print(f"measured: dial() through the down site 0 -> INVITE on site 1 after "
              f"{(out[0].ts - t0) * 1000:.1f} ms")  # fmt: skip
        assert out[0].ts - t0 < 0.2 and out[0].connection == 1
        assert [e.state for e in arec.sessions(session.id)] == [
            "in_progress", "ringing", "established"
        ]  # fmt: skip
        assert len(session.call_ids) == 1  # nothing was tried on site 0
        await session.hangup()


async def test_a_site_still_registering_is_waited_for_at_most_the_transaction_timeout(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port_on(A, B)
    users = users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
    sites = [conn("1001", port, server=f"{A}:{port}", domain=REALM),
             conn("1001", port, id=1, server=f"{B}:{port}", domain=REALM)]  # fmt: skip
    with DnsServer() as dns:
        async with (
            edge_node(tmp_path, A, port, redis_url, users) as na,
            edge_node(tmp_path, B, port, redis_url, users),
            running_phone(phone_config(dns.address, [conn("1002", port, server=f"{B}:{port}",
                                                           domain=REALM)]), auto_answer=True)
            as (bob, _),
        ):  # fmt: skip
            await bob.wait_registered(0)
            na.freeze()  # site 0 silent: its first REGISTER will time out
            try:
                async with running_phone(
                    phone_config(dns.address, sites, sip_transaction_timeout=TIMEOUT_MS)
                ) as (alice, arec):
                    t0 = time.time()
                    waiter = asyncio.create_task(alice.wait_registered(0, timeout=10))
                    session = await alice.dial("1002", connection_id=0)
                    await session.wait_for("established", 5)
                    out = session_events(arec, session=session.id, state="in_progress")
                    waited = out[0].ts - t0
                    print(f"measured: dial() while site 0 is still registering (silent) -> "
                          f"INVITE on site 1 after {waited * 1000:.0f} ms")  # fmt: skip
                    assert TIMEOUT_MS * 0.9 / 1000 <= waited <= TIMEOUT_MS / 1000 + 0.3, waited
                    assert out[0].connection == 1 and len(session.call_ids) == 1
                    with pytest.raises(ConnectionUnavailable, match="408 Request Timeout"):
                        await waiter  # raised when site 0 was reported down, not after 10 s
                    assert time.time() - t0 < 2
                    await session.hangup()
            finally:
                na.thaw()


async def test_site_down_says_which_disconnections_were_the_sites(
    tmp_path: Path, redis_url: str
) -> None:
    async with two_sites(tmp_path, redis_url) as (na, _, alice, arec, bob):
        await alice.wait_registered(0)
        bob.auto_answer = False
        busy = await alice.dial("1002", connection_id=1)
        await busy.wait_for("ringing", 5)
        ringing = next(s for s in bob.phone_sessions.values() if s.direction == "inbound")
        ringing.reject(486)
        await busy.wait_for("disconnected", 5)
        (end,) = session_events(arec, session=busy.id, state="disconnected")
        assert (end.reason, end.site_down) == ("486 Busy Here", False)
        assert '"site_down":false' in end.to_json()

        na.freeze()  # site 0 silent, and only site 0 is offered
        await alice.disable_connection(1)
        down = await alice.dial("1002", connection_id=0)
        with pytest.raises(RuntimeError, match="408 Request Timeout"):
            await down.wait_for("established", 5)
        ends = session_events(arec, session=down.id, state="disconnected")
        # one proxy only: no retry, so one disconnection, and it was the site
        assert [(e.reason, e.site_down) for e in ends] == [("408 Request Timeout", True)]
        assert '"site_down":true' in ends[0].to_json()


@needs_kamailio
async def test_inbound_calls_arrive_on_the_second_site_when_the_first_is_gone(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port_on(A, KAM)
    users = users_file(tmp_path, {"1001": PASSWORD})
    agent = [conn("1001", port, server=f"{A}:{port}", domain=REALM),
             conn("1001", port, id=1, server=f"{KAM}:{port}")]  # fmt: skip
    caller = [conn("1003", port, server=f"{KAM}:{port}")]
    with DnsServer() as dns:
        async with (
            edge_node(tmp_path, A, port, redis_url, users) as site0,
            kamailio_site(tmp_path, KAM, port),
            running_phone(phone_config(dns.address, agent, keepalive_interval=0.5,
                                       sip_transaction_timeout=TIMEOUT_MS)) as (alice, arec),
            running_phone(phone_config(dns.address, caller)) as (carol, _),
        ):  # fmt: skip
            await alice.wait_registered(0)
            await alice.wait_registered(1)
            await carol.wait_registered(0)
            site0.kill()
            await arec.wait(event="connection_status", connection=0, status="unavailable")
            call = await carol.dial("1001")  # Kamailio's location lookup: site 1's binding
            ringing = await arec.wait(event="session", state="ringing", direction="inbound")
            assert isinstance(ringing, SessionEvent) and ringing.connection == 1
            assert ringing.call_id == call.call_id
            alice.phone_sessions[ringing.session].answer()
            await call.wait_for("established", 5)
            answered = await arec.wait(event="session", session=ringing.session,
                                       state="established")  # fmt: skip
            assert isinstance(answered, SessionEvent) and answered.connection == 1
            await call.hangup()
            far = await arec.wait(event="session", session=ringing.session, state="disconnected")
            assert isinstance(far, SessionEvent) and far.reason == "remote hangup"
            assert not far.site_down
