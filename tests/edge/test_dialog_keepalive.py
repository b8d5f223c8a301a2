"""Calls that outlive a failure: the edge keeps each call it record-routed alive with
in-dialog OPTIONS to both sides and ends it for the side still there when the other
stops answering (SIPp caller -> edge -> SIPp callee; one of them SIGKILLed mid-call)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

from tests.edge.helpers import edge_port, pool, running_edge, wait_dest_state
from tests.edge.scenarios import BYE, callee, talk
from tests.sipp import free_port, needs_sipp, ok_to_last, run_sipp, sipp_process

pytestmark = [needs_sipp]

KEEPALIVE = {"keepalive_interval": 1.0, "keepalive_failures": 2, "keepalive_timeout": 1.0}
# the slowest a call may take to be ended: every interval a keep-alive, two lost in a row,
# the second after its time-out; plus scheduling and SIPp's own pacing
LIMIT = KEEPALIVE["keepalive_interval"] * KEEPALIVE["keepalive_failures"] + 1.0 + 1.5

BYE_WITH_REASON = """  <recv request="BYE" next="bye">
    <action>
      <ereg regexp="^ *SIP *; *cause=408 *; *text=\\"{side} unreachable\\" *$" search_in="hdr"
            header="Reason:" check_it="true" assign_to="why"/>
    </action>
  </recv>
  <Reference variables="why"/>"""


def caller(bye: str, hang_up_after_keepalives: int = 0) -> str:
    """Calls sip:ivr@edge and stays until a BYE (checked by ``bye``); with
    ``hang_up_after_keepalives``, it answers that many keep-alives, then hangs up."""
    head = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>{tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70"""
    if hang_up_after_keepalives:
        answered = f"""  <recv request="OPTIONS"/>
  {ok_to_last()}
""" * hang_up_after_keepalives
        rest = f"""{answered}  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      [routes]
{head.format(tag="[peer_tag_param]", cseq="2 BYE")}
      Content-Length: 0

  ]]></send>
  <recv request="OPTIONS" optional="true" next="late_ka"/>
  <recv response="200"/>
  <nop next="done"/>
  <label id="late_ka"/>
  {ok_to_last()}
  <recv response="200"/>
  <label id="done"/>"""
    else:
        rest = talk(bye)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller that stays in the call">
  <send retrans="500"><![CDATA[

      INVITE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
{head.format(tag="", cseq="1 INVITE")}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      [routes]
{head.format(tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Length: 0

  ]]></send>
{rest}
</scenario>
"""


def kill(proc: asyncio.subprocess.Process) -> float:
    os.kill(proc.pid, signal.SIGKILL)
    return time.monotonic()


async def until_dialogs(edge: object, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(edge.dialogs.table) != n:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"the edge never had {n} dialog(s)"
        await asyncio.sleep(0.05)


async def test_callee_killed_mid_call_the_caller_gets_a_bye_with_reason(tmp_path: Path) -> None:
    callee_port = free_port()
    async with sipp_process(tmp_path, "callee", callee(BYE),
                            "-p", str(callee_port)) as dead:  # fmt: skip
        pools = [pool("ivr", [f"sip:127.0.0.1:{callee_port}"], probe_interval=1.0)]
        async with running_edge(tmp_path, pools, dialogs=KEEPALIVE) as edge:
            await wait_dest_state(edge, 0, 0, "active")
            path = tmp_path / "caller.xml"
            path.write_text(caller(BYE_WITH_REASON.format(side="callee")))
            call = asyncio.create_task(run_sipp(
                "-sf", str(path), f"127.0.0.1:{edge_port(edge)}", "-m", "1", "-i", "127.0.0.1",
                "-p", str(free_port()), "-mp", str(free_port()), timeout=30,
            ))  # fmt: skip
            await until_dialogs(edge, 1)
            await asyncio.sleep(2.0)  # a call up for 2 s, kept alive: both sides answered
            assert edge.dialogs.keepalives >= 2
            killed = kill(dead)
            result = await call
            took = time.monotonic() - killed
            assert result.ok, result.output[-3000:]
            print(f"callee killed -> caller's BYE answered: {took:.2f} s")
            assert took < LIMIT, took
            assert edge.dialogs.ended == {"callee unreachable": 1}
            assert len(edge.dialogs.table) == 0
            metrics = edge.metrics
            edge.metrics.update(edge)
            assert metrics.dialogs_ended.labels("callee unreachable")._value.get() == 1


async def test_caller_killed_mid_call_the_callee_gets_a_bye_with_reason(tmp_path: Path) -> None:
    callee_port = free_port()
    xml = callee(BYE_WITH_REASON.format(side="caller"))
    async with sipp_process(tmp_path, "callee", xml, "-p", str(callee_port)):
        pools = [pool("ivr", [f"sip:127.0.0.1:{callee_port}"], probe_interval=30.0)]
        async with running_edge(tmp_path, pools, dialogs=KEEPALIVE) as edge:
            await wait_dest_state(edge, 0, 0, "active")
            async with sipp_process(tmp_path, "caller", caller(BYE),
                                    f"127.0.0.1:{edge_port(edge)}", "-m", "1",
                                    "-p", str(free_port())) as doomed:  # fmt: skip
                await until_dialogs(edge, 1)
                await asyncio.sleep(2.0)
                killed = kill(doomed)
                # SIPp answers the BYE 200 only when its Reason matched (check_it)
                deadline = killed + LIMIT
                while edge.dialogs.bye_answers != {"callee 200": 1}:
                    assert time.monotonic() < deadline, edge.dialogs.listing()
                    await asyncio.sleep(0.02)
                print(f"caller killed -> callee's BYE answered: {time.monotonic() - killed:.2f} s")
            assert edge.dialogs.ended == {"caller unreachable": 1}
            assert len(edge.dialogs.table) == 0


async def test_a_slow_but_live_callee_is_not_cut_and_the_callers_bye_ends_the_dialog(
    tmp_path: Path,
) -> None:
    # the callee answers each keep-alive after 600 ms, within the 1 s time-out: alive
    callee_port = free_port()
    xml = callee(BYE, options_delay_ms=600)
    async with sipp_process(tmp_path, "callee", xml, "-p", str(callee_port)):
        pools = [pool("ivr", [f"sip:127.0.0.1:{callee_port}"], probe_interval=30.0)]
        async with running_edge(tmp_path, pools, dialogs=KEEPALIVE) as edge:
            path = tmp_path / "caller.xml"
            path.write_text(caller(BYE, hang_up_after_keepalives=4))
            call = asyncio.create_task(run_sipp(
                "-sf", str(path), f"127.0.0.1:{edge_port(edge)}", "-m", "1", "-i", "127.0.0.1",
                "-p", str(free_port()), "-mp", str(free_port()), timeout=30,
            ))  # fmt: skip
            await until_dialogs(edge, 1)
            # what an operator sees meanwhile
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sipha", "ctl", "--admin",
                f"http://{edge.config.admin.listen}", "dialogs",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            text = out.decode()
            assert proc.returncode == 0, err.decode()
            assert "1 dialog(s) on this node, keep-alive every 1 s" in text, text
            assert re.search(rf"ivr/sip:127\.0\.0\.1:{callee_port}\s*│\s*1", text), text
            assert "<sip:ivr@127.0.0.1" in text and "sipp <sip:sipp@127.0.0.1" in text, text
            result = await call
            assert result.ok, result.output[-3000:]
            assert edge.dialogs.keepalives >= 8  # 4 to each side
            assert edge.dialogs.ended == {}
            assert len(edge.dialogs.table) == 0  # the caller's BYE ended it
