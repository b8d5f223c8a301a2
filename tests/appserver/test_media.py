"""The prompt app with a SIPp caller: RTP at 50 packets/s with the right payload type, and
RFC 4733 DTMF sent by SIPp (from a pcap this test writes) collected by the app."""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from pathlib import Path

from tests import apps
from tests.appserver.helpers import running_appserver, scenario, sip_port
from tests.sipp import free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]


def dtmf_pcap(path: Path, digits: str) -> None:
    """A pcap of RFC 4733 telephone-event packets (PT 101), 20 ms apart, as SIPp plays them."""
    events = {d: i for i, d in enumerate("0123456789*#")}
    packets: list[tuple[float, bytes]] = []
    t, seq, ts = 0.0, 1000, 16000
    for digit in digits:
        for n in range(8):  # 160 ms of tone, the last three packets with the E bit
            end = n >= 5
            duration = min(n + 1, 6) * 160
            payload = struct.pack("!BBH", events[digit], (0x80 if end else 0) | 10, duration)
            rtp = (
                struct.pack("!BBHII", 0x80, (0x80 if n == 0 else 0) | 101, seq, ts, 0x1234)
                + payload
            )
            packets.append((t, rtp))
            seq += 1
            t += 0.02
        ts += 8 * 160 + 800  # the next event starts later (new timestamp)
        t += 0.1
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet link type
        for when, rtp in packets:
            udp = struct.pack("!HHHH", 6000, 7000, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp  # fmt: skip
            frame = b"\x00" * 12 + b"\x08\x00" + ip
            sec = int(when)
            f.write(
                struct.pack("<IIII", sec, int((when - sec) * 1e6), len(frame), len(frame)) + frame
            )


def caller_scenario(rtp_port: int, pcap: Path) -> str:
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="caller: media to the test's socket, DTMF from a pcap, callee hangs up">
  <send retrans="500"><![CDATA[

      INVITE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio {rtp_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[

      ACK sip:ivr@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <pause milliseconds="2200"/>
  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <recv request="BYE"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
</scenario>
"""


class RtpCounter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int]] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.arrivals.append((time.monotonic(), data[1] & 0x7F))


async def test_prompt_plays_rtp_at_50_pps_and_collects_rfc4733_dtmf(tmp_path: Path) -> None:
    apps.COLLECTED.clear()
    pcap = tmp_path / "dtmf.pcap"
    dtmf_pcap(pcap, "123")
    loop = asyncio.get_running_loop()
    rtp_port = free_port()
    transport, counter = await loop.create_datagram_endpoint(
        RtpCounter, local_addr=("127.0.0.1", rtp_port)
    )
    settings = {"prompt": "tone:440/2000", "digits": 3, "digit_timeout": 4.0, "goodbye": ""}
    try:
        async with running_appserver(
            tmp_path, app={"handler": "tests.apps:prompt_and_record", "settings": settings}
        ) as server:
            result = await run_sipp(
                "-sf", scenario(tmp_path, "caller.xml", caller_scenario(rtp_port, pcap)),
                f"127.0.0.1:{sip_port(server)}", "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()),
                "-mp", str(free_port()), timeout=20,
            )  # fmt: skip
            assert result.ok, result.output[-2500:]
    finally:
        transport.close()
    assert apps.COLLECTED == ["123"]
    times = [t for t, pt in counter.arrivals if pt == 0]
    assert {pt for _, pt in counter.arrivals} == {0}  # PCMU, as answered
    assert 95 <= len(times) <= 101  # 2 s of prompt at 20 ms
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 45 <= rate <= 55, rate


def late_offer_hold_scenario(rtp_port: int) -> str:
    """INVITE without SDP (our offer comes in the 200, SIPp answers in the ACK), then a
    re-INVITE putting us on hold (sendonly), then one retrieving the call."""

    def sdp(direction: str) -> str:
        return f"""v=0
      o=user1 53655765 2353687637 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio {rtp_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a={direction}"""

    head = """      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:ivr@[remote_ip]:[remote_port]>{tag}
      Call-ID: [call_id]
      CSeq: {cseq}
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70"""

    def reinvite(n: int, direction: str) -> str:
        return f"""  <send retrans="500"><![CDATA[

      INVITE [next_url] SIP/2.0
{head.format(tag="[peer_tag_param]", cseq=f"{n} INVITE")}
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp(direction)}

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
{head.format(tag="[peer_tag_param]", cseq=f"{n} ACK")}
      Content-Length: 0

  ]]></send>
"""

    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="late offer, hold, retrieve">
  <send retrans="500"><![CDATA[

      INVITE sip:ivr@[remote_ip]:[remote_port] SIP/2.0
{head.format(tag="", cseq="1 INVITE")}
      Content-Length: 0

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true">
    <action><ereg regexp="m=audio [0-9]+ RTP/AVP 0 8 101" search_in="body" check_it="true" assign_to="1"/></action>
  </recv>
  <Reference variables="1"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
{head.format(tag="[peer_tag_param]", cseq="1 ACK")}
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp("sendrecv")}

  ]]></send>
  <pause milliseconds="1000"/>
{reinvite(2, "sendonly")}  <pause milliseconds="1000"/>
{reinvite(3, "sendrecv")}  <pause milliseconds="1000"/>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
{head.format(tag="[peer_tag_param]", cseq="4 BYE")}
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
"""


async def test_late_offer_and_media_stops_while_on_hold(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    rtp_port = free_port()
    transport, counter = await loop.create_datagram_endpoint(
        RtpCounter, local_addr=("127.0.0.1", rtp_port)
    )
    settings = {
        "prompt": "tone:440/10000",
        "digits": 1,
        "digit_timeout": 1.0,
        "goodbye": "",
        "ring": False,
    }
    try:
        async with running_appserver(
            tmp_path, app={"handler": "sipha.apps.prompt:main", "settings": settings}
        ) as server:
            result = await run_sipp(
                "-sf", scenario(tmp_path, "late.xml", late_offer_hold_scenario(rtp_port)),
                f"127.0.0.1:{sip_port(server)}", "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), timeout=20,
            )  # fmt: skip
            assert result.ok, result.output[-2500:]
    finally:
        transport.close()
    times = [t for t, _ in counter.arrivals]
    assert len(times) > 60  # media flowed after the ACK carried the answer (late offer)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 0.8  # nothing was sent while the caller held us (about 1 s)
    held_from = times[gaps.index(max(gaps))]
    assert any(t > held_from + 0.8 for t in times)  # and media resumed after retrieve
