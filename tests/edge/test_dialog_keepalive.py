"""Calls that outlive a failure: the edge keeps each call it record-routed alive with
in-dialog OPTIONS to both sides and ends it for the side still there when the other
stops answering (SIPp caller -> edge -> SIPp callee; one of them SIGKILLed mid-call)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.edge.helpers import edge_port, pool, running_edge, wait_dest_state
from tests.edge.scenarios import reply
from tests.sipp import SIPP, free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]

KEEPALIVE = {"keepalive_interval": 1.0, "keepalive_failures": 2, "keepalive_timeout": 1.0}
# the slowest a call may take to be ended: every interval a keep-alive, two lost in a row,
# the second after its time-out; plus scheduling and SIPp's own pacing
LIMIT = KEEPALIVE["keepalive_interval"] * KEEPALIVE["keepalive_failures"] + 1.0 + 1.5

BYE = '  <recv request="BYE" next="bye"/>'
IN_DIALOG_OK = """<send{next}><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>"""

BYE_WITH_REASON = """  <recv request="BYE" next="bye">
    <action>
      <ereg regexp="^ *SIP *; *cause=408 *; *text=\\"{side} unreachable\\" *$" search_in="hdr"
            header="Reason:" check_it="true" assign_to="why"/>
    </action>
  </recv>
  <Reference variables="why"/>"""


def talk(bye: str, options_delay_ms: int = 0) -> str:
    """In a call: answer the edge's keep-alive OPTIONS (after ``options_delay_ms``) until a
    BYE (checked by ``bye``) arrives; answer it."""
    pause = f'<pause milliseconds="{options_delay_ms}"/>' if options_delay_ms else ""
    return f"""
  <label id="talk"/>
  <recv request="OPTIONS" optional="true" next="ka"/>
{bye}
  <label id="ka"/>
  {pause}
  {IN_DIALOG_OK.format(next=' next="talk"')}
  <label id="bye"/>
  {IN_DIALOG_OK.format(next="")}
"""


def callee(bye: str, options_delay_ms: int = 0) -> str:
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callee that stays in the call">
  <recv request="OPTIONS" optional="true" next="probe"/>
  <recv request="INVITE" rrs="true"/>
  {reply("200 OK", sdp=True, rrs=True)}
  <recv request="ACK"/>
{talk(bye, options_delay_ms)}
  <nop next="end"/>
  <label id="probe"/>
  {reply("200 OK")}
  <label id="end"/>
  <nop/>
</scenario>
"""


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
  {IN_DIALOG_OK.format(next="")}
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
  {IN_DIALOG_OK.format(next="")}
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


@contextlib.asynccontextmanager
async def sipp_process(tmp_path: Path, name: str, xml: str, *args: str) -> AsyncIterator[
    asyncio.subprocess.Process
]:  # fmt: skip
    """A SIPp process this test may SIGKILL (what a crash does to a call)."""
    assert SIPP is not None
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(path), "-i", "127.0.0.1", "-mp", str(free_port()), "-nostdin",
        "-timeout", "60s", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if "-p" in args:  # a callee: ready once its port is taken
            port = int(args[args.index("-p") + 1])
            deadline = time.monotonic() + 5
            while port_free(port):
                assert time.monotonic() < deadline, "SIPp never bound its port"
                await asyncio.sleep(0.02)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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
