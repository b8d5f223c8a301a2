"""RFC 4028 session timers in the appserver, against SIPp callers: a caller that asked to
refresh and never does is hung up at expiry with a Reason; a caller that leaves the
refreshing to us gets an UPDATE (or a re-INVITE) every half interval; a too-short
interval gets 422 with Min-SE; disabled, nothing is said about timers.

The intervals are seconds, not RFC 4028's 90 s floor, so that the suite stays fast:
``min_se = 2`` is allowed by the config for labs and tests."""

from __future__ import annotations

import time
from pathlib import Path

from tests.appserver.helpers import running_appserver, scenario, sip_port
from tests.sipp import free_port, needs_sipp, ok_to_last, run_sipp

pytestmark = [needs_sipp]

TIMER = {"expires": 1800, "min_se": 2, "refresher": "auto"}
SDP = """v=0
      o=user1 53655765 2353687637 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""
HEAD = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>{tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70"""


def check(header: str, regexp: str, var: str) -> str:
    return (f'<ereg regexp="{regexp}" search_in="hdr" header="{header}:" check_it="true" '
            f'assign_to="{var}"/>')  # fmt: skip


def invite(timer_headers: str, expect: str, checks: str = "", variables: str = "") -> str:
    """The start of a caller's scenario: an INVITE with ``timer_headers``, the answer
    ``expect`` checked with ``checks`` (a failure is ACKed in its transaction)."""
    txn = ' start_txn="invite"' if expect != "200" else ""
    rtxn = ' response_txn="invite"' if expect != "200" else ""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="session timer caller">
  <send retrans="500"{txn}><![CDATA[

      INVITE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
{HEAD.format(tag="", cseq="1 INVITE")}
{timer_headers}
      Content-Type: application/sdp
      Content-Length: [len]

      {SDP}

  ]]></send>
  <recv response="100" optional="true"{rtxn}/>
  <recv response="{expect}" rrs="true"{rtxn}><action>{checks}</action></recv>
  {f'<Reference variables="{variables}"/>' if variables else ""}
"""


def ack() -> str:
    return f"""  <send><![CDATA[

      ACK [next_url] SIP/2.0
{HEAD.format(tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Length: 0

  ]]></send>
"""


def answer_refresh(method: str) -> str:
    """Receive our refresh (checked: it carries Session-Expires) and answer it 200."""
    body = f"Content-Type: application/sdp\n      Content-Length: [len]\n\n      {SDP}" if (
        method == "INVITE") else "Content-Length: 0"  # fmt: skip
    ack_back = '  <recv request="ACK"/>\n' if method == "INVITE" else ""
    return f"""  <recv request="{method}">
    <action>{check("Session-Expires", "^ *4;refresher=uac", "se")}</action>
  </recv>
  <Reference variables="se"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Session-Expires: 4;refresher=uac
      Require: timer
      {body}

  ]]></send>
{ack_back}"""


def bye() -> str:
    return f"""  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
{HEAD.format(tag="[peer_tag_param]", cseq="9 BYE")}
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
"""


async def call(tmp_path: Path, xml: str, **server: object) -> tuple[float, str]:
    async with running_appserver(
        tmp_path, app={"handler": "tests.apps:hold"}, session_timer={**TIMER, **server}
    ) as app:
        start = time.monotonic()
        result = await run_sipp(
            "-sf", scenario(tmp_path, "caller.xml", xml), f"127.0.0.1:{sip_port(app)}",
            "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
            timeout=30,
        )  # fmt: skip
        took = time.monotonic() - start
        assert result.ok, result.output[-3000:]
        return took, str(app.counters)


async def test_a_caller_that_never_refreshes_is_hung_up_at_expiry_with_a_reason(
    tmp_path: Path,
) -> None:
    xml = invite(
        "      Supported: timer\n      Session-Expires: 4;refresher=uac\n      Min-SE: 2",
        "200",
        check("Session-Expires", "^ *4;refresher=uac *$", "se")
        + check("Require", "timer", "req"),
        "se,req",
    ) + ack() + f"""  <recv request="BYE">
    <action>{check("Reason", 'cause=408;text=.Session Timer Expired.', "why")}</action>
  </recv>
  <Reference variables="why"/>
  {ok_to_last()}
</scenario>
"""
    took, _ = await call(tmp_path, xml)
    # BYE at interval - min(32, interval / 3) = 2.67 s after the answer (RFC 4028 §10)
    assert 2.5 < took < 4.5, took


async def test_we_refresh_with_update_every_half_interval_when_the_caller_allows_it(
    tmp_path: Path,
) -> None:
    xml = invite(
        "      Supported: timer\n      Session-Expires: 4;refresher=uas\n"
        "      Allow: INVITE, ACK, BYE, CANCEL, UPDATE",
        "200",
        check("Session-Expires", "^ *4;refresher=uas *$", "se"),
        "se",
    ) + ack() + answer_refresh("UPDATE") + answer_refresh("UPDATE") + bye()
    took, _ = await call(tmp_path, xml, refresher="uas")
    assert 3.8 < took < 6.0, took  # two refreshes, 2 s apart


async def test_without_update_in_allow_the_refresh_is_a_reinvite_with_the_same_sdp(
    tmp_path: Path,
) -> None:
    xml = invite(
        "      Supported: timer\n      Session-Expires: 4;refresher=uas", "200",
    ) + ack() + answer_refresh("INVITE") + bye()  # fmt: skip
    took, _ = await call(tmp_path, xml)
    assert 1.8 < took < 4.0, took


async def test_a_short_interval_is_refused_422_with_min_se(tmp_path: Path) -> None:
    xml = invite(
        "      Supported: timer\n      Session-Expires: 60", "422",
        check("Min-SE", "^ *120 *$", "min"), "min",
    ) + """  <send ack_txn="invite"><![CDATA[

      ACK sip:ivr@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
</scenario>
"""  # fmt: skip
    _, counters = await call(tmp_path, xml, min_se=120)
    assert "rejected_session_interval" in counters


async def test_disabled_timers_are_not_advertised_nor_used(tmp_path: Path) -> None:
    xml = invite(
        "      Supported: timer\n      Session-Expires: 4;refresher=uac", "200",
        '<ereg regexp="." search_in="hdr" header="Session-Expires:" check_it_inverse="true" '
        'assign_to="none"/>', "none",
    ) + ack() + bye()  # fmt: skip
    await call(tmp_path, xml, enabled=False)
