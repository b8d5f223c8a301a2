"""sipha against a real softphone: baresip 1.0.0 (Debian), driven over its ctrl_tcp.

baresip registers with ``sipha edge`` (MD5 digest: the only algorithm it answers), is
called through the edge by SIPp and by ``sipha phone`` and answers, and calls the appserver's prompt app
through the edge and presses digits (RFC 4733 telephone-events, what ``sndcode`` sends).

baresip finds the edge in two ways: as the AOR's domain (edge.test, resolved through a
DNS server on loopback: SRV _sip._udp / _sip._tcp then A), and as an outbound proxy (the
account's ``outbound=`` parameter: a preloaded loose Route on every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipha.edge.server import EdgeServer
from tests import apps
from tests.appserver.helpers import running_appserver, sip_port, toml, wait_until
from tests.baresip import Baresip, account_line, needs_baresip, running_baresip
from tests.dnsserver import DnsServer
from tests.edge.helpers import edge_port, running_edge
from tests.endpoint.helpers import PASSWORD, REALM, users_file
from tests.sipp import free_port, needs_sipp, ok_to_last, sipp_background

pytestmark = [needs_baresip]

USER = "1001"
CALLER = "1002"  # sipha phone
AOR = f"sip:{USER}@{REALM}"
TRANSPORTS = ["udp", "tcp"]


@contextlib.asynccontextmanager
async def edge_registrar(
    tmp_path: Path, pools: list[dict[str, Any]] | None = None
) -> AsyncIterator[EdgeServer]:
    """An edge that is the registrar of edge.test, MD5 only (baresip 1.0 answers nothing
    else)."""
    users = users_file(tmp_path, {USER: PASSWORD, CALLER: PASSWORD})
    registrar = {"domains": [REALM], "users_file": str(users), "digest_algorithms": ["MD5"]}
    async with running_edge(tmp_path, pools, registrar=registrar) as edge:
        yield edge


@contextlib.contextmanager
def edge_dns(edge: EdgeServer) -> Iterator[DnsServer]:
    """edge.test resolves to the edge (RFC 3263: SRV per transport, then A)."""
    port = edge_port(edge)
    with DnsServer() as dns:
        dns.add(REALM, "A", "127.0.0.1")
        for t in TRANSPORTS:
            dns.add(f"_sip._{t}.{REALM}", "SRV", f"0 0 {port} {REALM}.")
        yield dns


@contextlib.asynccontextmanager
async def registered_baresip(
    tmp_path: Path, edge: EdgeServer, transport: str, via: str = "domain"
) -> AsyncIterator[Baresip]:
    """baresip registered as 1001@edge.test over ``transport``; ``via`` "domain": the edge
    is found through DNS for edge.test, "outbound": it is the account's outbound proxy."""
    proxy = f"127.0.0.1:{edge_port(edge)}" if via == "outbound" else None
    account = account_line(USER, REALM, PASSWORD, proxy=proxy, transport=transport, regint=60)
    with edge_dns(edge) as dns:
        async with running_baresip(tmp_path, [account], dns_server=dns.address) as phone:
            await phone.wait_registered(AOR)
            yield phone


def trace(phone: Baresip) -> list[str]:
    """The SIP messages in baresip's -s trace, each as 'PROTO src -> dst' + its text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", phone.log(10**7))
    return [m.strip() for m in text.split("\n#\n")[1:]]


def first_line(message: str) -> str:
    lines = message.splitlines()
    return lines[1] if len(lines) > 1 else ""


# -- (a) registration --------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_baresip_registers_with_the_edge(tmp_path: Path, transport: str) -> None:
    async with (
        edge_registrar(tmp_path) as edge,
        registered_baresip(tmp_path, edge, transport) as phone,
    ):
        bindings = await edge.registrar.lookup(AOR)
        assert len(bindings) == 1, bindings
        b = bindings[0]
        # baresip's Contact: user 1001-0x<pointer>, its sip_listen port, transport=tcp over TCP
        assert re.fullmatch(
            rf"sip:{USER}-0x[0-9a-f]+@127\.0\.0\.1:{phone.sip_port}"
            + (";transport=tcp" if transport == "tcp" else ""),
            b.contact,
        ), b.contact
        assert b.source.startswith(f"{transport}:127.0.0.1:"), b.source
        assert "OK" in await phone.registered()
        challenges = [m for m in trace(phone) if "WWW-Authenticate:" in m]
        assert challenges and all("algorithm=MD5" in m for m in challenges)
    # baresip unregistered on quit (REGISTER expires=0, answered after a new challenge)
    assert "expires=0" in phone.log(10**7)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_baresip_registers_through_the_edge_as_outbound_proxy(
    tmp_path: Path, transport: str
) -> None:
    async with (
        edge_registrar(tmp_path) as edge,
        registered_baresip(tmp_path, edge, transport, via="outbound"),
    ):
        assert len(await edge.registrar.lookup(AOR)) == 1


# -- (b) SIPp calls baresip through the edge ----------------------------------------------
def caller_hung_up_by_callee() -> str:
    """INVITE sip:[service]@edge.test (sent to the edge), 200, ACK along the Record-Route,
    then the callee's BYE is answered 200."""
    head = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[service]@edge.test>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call a registered user through the edge, the callee hangs up">
  <send retrans="500"><![CDATA[

      INVITE sip:[service]@edge.test SIP/2.0
{head.format(to_tag="", cseq="1 INVITE")}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      [routes]
{head.format(to_tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Length: 0

  ]]></send>
  <recv request="BYE"/>
  {ok_to_last()}
</scenario>
"""


@needs_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sipp_calls_baresip_through_the_edge(tmp_path: Path, transport: str) -> None:
    scenario = tmp_path / "caller.xml"
    scenario.write_text(caller_hung_up_by_callee())
    async with (
        edge_registrar(tmp_path) as edge,
        registered_baresip(tmp_path, edge, transport) as phone,
    ):
        args = ["-sf", str(scenario), f"127.0.0.1:{edge_port(edge)}", "-s", USER, "-m", "1"]
        args += ["-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port())]
        if transport == "tcp":
            args += ["-t", "t1"]
        since = phone.mark()
        async with sipp_background(*args, timeout=30) as sipp:
            incoming = await phone.wait_event("CALL_INCOMING", since=since)
            assert incoming["direction"] == "incoming"
            assert incoming["peeruri"].startswith("sip:sipp@127.0.0.1"), incoming
            await phone.answer()
            established = await phone.wait_event("CALL_ESTABLISHED", since=since)
            assert established["id"] == incoming["id"]
            await phone.hangup()
            closed = await phone.wait_event("CALL_CLOSED", since=since)
            assert closed["id"] == incoming["id"]
            result = await sipp
        assert result.ok, result.output[-3000:]
        messages = trace(phone)
        invites = [m for m in messages if first_line(m).startswith("INVITE ")]
        assert len(invites) == 1, invites
        # what baresip answered the INVITE: it rings (manual answer mode), then 200
        answers = [
            first_line(m).split()[1]
            for m in messages
            if first_line(m).startswith("SIP/2.0") and re.search(r"^CSeq: \d+ INVITE", m, re.M)
        ]
        assert answers[-2:] == ["180", "200"] or answers[-3:-1] == ["180", "200"], answers
        assert phone.types(since)[-1] == "CALL_CLOSED"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sipha_phone_calls_baresip_through_the_edge(tmp_path: Path, transport: str) -> None:
    """``sipha phone --call`` (1002, over UDP, the edge found by RFC 3263 in the tests' DNS)
    calls baresip (1001, over ``transport``), which answers; sipha hangs up after 1 s."""
    async with (
        edge_registrar(tmp_path) as edge,
        registered_baresip(tmp_path, edge, transport) as phone,
    ):
        with edge_dns(edge) as dns:
            config = tmp_path / "phone.toml"
            config.write_text(toml({
                "dns": {"nameservers": [dns.address], "hosts_file": ""},
                "connection": [{"id": 0, "user": CALLER, "password": PASSWORD, "server": REALM,
                                "protocol": "udp"}],
            }))  # fmt: skip
            since = phone.mark()
            caller = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sipha", "phone", "-c", str(config), "--call", USER,
                "--duration", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                incoming = await phone.wait_event("CALL_INCOMING", since=since, timeout=15)
                assert incoming["peeruri"] == f"sip:{CALLER}@{REALM}", incoming
                await phone.answer()
                closed = await phone.wait_event("CALL_CLOSED", since=since, timeout=15)
                assert closed["id"] == incoming["id"]
                out, err = await asyncio.wait_for(caller.communicate(), 15)
            finally:
                if caller.returncode is None:
                    caller.kill()
                    await caller.communicate()
    assert caller.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line) for line in out.decode().splitlines()]
    states = [e["state"] for e in events if e["event"] == "session"]
    assert states[:3] == ["in_progress", "ringing", "established"], states
    assert states[-1] == "disconnected"
    # baresip saw the call established, then closed by sipha's BYE (answered 200)
    assert phone.types(since).index("CALL_ESTABLISHED") < phone.types(since).index("CALL_CLOSED")
    byes = [m for m in trace(phone) if first_line(m).startswith("BYE ")]
    assert len(byes) == 1 and f"From: <sip:{CALLER}@{REALM}>" in byes[0], byes


# -- (c) baresip calls the prompt app and presses digits ----------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_baresip_dtmf_reaches_the_prompt_app(tmp_path: Path, transport: str) -> None:
    apps.COLLECTED.clear()
    settings = {"prompt": "tone:440/200", "digits": 3, "digit_timeout": 5.0, "goodbye": ""}
    async with running_appserver(
        tmp_path, app={"handler": "tests.apps:prompt_and_record", "settings": settings}
    ) as server:
        ivr = {
            "name": "ivr",
            "match": "^sip:ivr@",
            "probe_interval": 1.0,
            "destination": [{"uri": f"sip:127.0.0.1:{sip_port(server)}"}],
        }
        async with (
            edge_registrar(tmp_path, [ivr]) as edge,
            registered_baresip(tmp_path, edge, transport) as phone,
        ):
            since = phone.mark()
            await phone.dial(f"sip:ivr@{REALM}")
            await phone.wait_event("CALL_ESTABLISHED", since=since)
            await phone.send_dtmf("123")
            # the app hangs up once it has its three digits (baresip: remote BYE)
            closed = await phone.wait_event("CALL_CLOSED", since=since, timeout=15)
            assert closed["direction"] == "outgoing", closed
            await wait_until(lambda: bool(apps.COLLECTED), timeout=5)  # appended after BYE
    assert apps.COLLECTED == ["123"], (phone.events, phone.log())
    messages = trace(phone)
    # RFC 4733 in the RTP stream only: baresip sent no SIP INFO
    assert not [m for m in messages if first_line(m).startswith("INFO ")]
    assert "send DTMF digit: '1'" in phone.log(10**7)
