"""Running an appserver in the test's event loop, asking it OPTIONS, SIPp scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sipha.appserver.server import AppServer
from sipha.config import dump_toml as toml
from sipha.sip import Headers, Request
from sipha.sip.ids import new_call_id, new_tag
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from tests.sipp import free_port


def base_config(sip_port: int, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}", f"tcp:127.0.0.1:{sip_port}"]},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "channels": {"max": 10},
        "app": {"handler": "tests.apps:hold"},
        "media": {
            "rtp_port_min": 30000 + (sip_port % 200) * 100,
            "rtp_port_max": 30099 + (sip_port % 200) * 100,
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


@contextlib.asynccontextmanager
async def running_appserver(tmp_path: Path, **overrides: Any) -> AsyncIterator[AppServer]:
    port = free_port()
    path = tmp_path / "appserver.toml"
    path.write_text(toml(base_config(port, **overrides)))
    server = AppServer(path)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class Prober:
    """Sends OPTIONS from a sipha stack (precise timing for the 'how fast' assertions)."""

    def __init__(self, stack: SipStack, port: int) -> None:
        self.stack = stack
        self.target = Target("udp", "127.0.0.1", port)

    async def code(self) -> int:
        h = Headers.of(
            ("From", f"<sip:prober@127.0.0.1>;tag={new_tag()}"),
            ("To", f"<sip:ivr@127.0.0.1:{self.target.port}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 OPTIONS"),
        )
        resp = await self.stack.request(
            Request("OPTIONS", f"sip:ivr@127.0.0.1:{self.target.port}", h), self.target
        )
        return resp.status

    async def wait_for_code(
        self, expected: int, timeout: float = 5.0, period: float = 0.02
    ) -> float:
        """Seconds until OPTIONS answers ``expected`` (AssertionError after ``timeout``)."""
        start = time.monotonic()
        while True:
            if await self.code() == expected:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"OPTIONS never answered {expected} within {timeout} s")
            await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def prober(server: AppServer) -> AsyncIterator[Prober]:
    async with SipStack(["udp:127.0.0.1:0"]) as stack:
        yield Prober(stack, server.stack.local("udp").port)


def sip_port(server: AppServer) -> int:
    return server.stack.local("udp").port


def admin_url(server: AppServer) -> str:
    assert server.admin is not None
    return f"http://127.0.0.1:{server.admin.port}"


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def scenario(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def options_expect(code: int) -> str:
    """SIPp OPTIONS prober expecting ``code`` (anything else fails the call)."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options expecting {code}">
  <send retrans="500"><![CDATA[

      OPTIONS sip:ivr@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:prober@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="{code}"/>
</scenario>
"""


SDP = """v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16"""


def invite_expect_reject(
    code: int, provisional: str = "", sdp: str = SDP, contact: bool = True
) -> str:
    """INVITE that must get (100 and) ``code``; any other response, a 18x included, fails.

    ``provisional``: responses that must come first, e.g. "183". ``sdp``: the offer;
    ``contact=False`` leaves the INVITE's Contact out.
    """
    contact_line = "Contact: <sip:sipp@[local_ip]:[local_port]>\n      " if contact else ""
    pre = "".join(
        f'  <recv response="{p}" response_txn="invite"/>\n' for p in provisional.split() if p
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="INVITE rejected with {code}, no 18x allowed before it">
  <send retrans="500" start_txn="invite"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      {contact_line}Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}

  ]]></send>
  <recv response="100" optional="true" response_txn="invite"/>
{pre}  <recv response="{code}" response_txn="invite"/>
  <send ack_txn="invite"><![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
</scenario>
"""
