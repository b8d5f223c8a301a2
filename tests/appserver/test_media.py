"""The prompt app with a SIPp caller: RTP at 50 packets/s with the right payload type, and
RFC 4733 DTMF sent by SIPp (from a pcap this test writes) collected by the app; media that
never goes quiet while the app waits for digits, and RTCP reports every 5 s."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from pathlib import Path

from sipha.media.rtcp import BYE, SR
from tests import apps
from tests.appserver.helpers import running_appserver, scenario, sip_port
from tests.sipp import free_port, needs_sipp, ok_to_last, run_sipp
from tests.test_rtcp import block, packets

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


def caller_scenario(rtp_port: int, pcap: Path | None) -> str:
    digits = f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>' if pcap else ""
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
  {digits}
  <recv request="BYE"/>
  {ok_to_last()}
</scenario>
"""


class RtpCounter(asyncio.DatagramProtocol):
    """Counts the RTP the app sends; with ``answer`` it also sends RTP back (SSRC
    0x5150, one packet per packet received) leaving out the sequence numbers in
    ``lost``, so that the app's RTCP has something to report."""

    def __init__(self, answer: bool = False, lost: range = range(0)) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self.silent: list[bool] = []  # the payload is G.711 silence (PCMU 0xFF)
        self.ssrc: set[int] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.answer, self.lost, self.seq = answer, lost, 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.arrivals.append((time.monotonic(), data[1] & 0x7F))
        self.silent.append(set(data[12:]) == {0xFF})
        self.ssrc.add(struct.unpack_from("!I", data, 8)[0])
        if self.answer and self.transport is not None:
            if self.seq not in self.lost:
                header = struct.pack("!BBHII", 0x80, 0, self.seq, 160 * self.seq, 0x5150)
                self.transport.sendto(header + b"\xff" * 160, addr)
            self.seq += 1

    def times(self) -> list[float]:
        return [t for t, _ in self.arrivals]


class RtcpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reports: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.reports.append((time.monotonic(), data))


async def rtp_and_rtcp_ports(
    rtp: RtpCounter,
) -> tuple[int, asyncio.DatagramTransport, asyncio.DatagramTransport, RtcpCollector]:
    """An even port for RTP and the one above it for RTCP (RFC 3550 §11), both free."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        port = free_port() & ~1
        try:
            t1, _ = await loop.create_datagram_endpoint(lambda: rtp, local_addr=("127.0.0.1", port))
        except OSError:
            continue
        try:
            t2, collector = await loop.create_datagram_endpoint(
                RtcpCollector, local_addr=("127.0.0.1", port + 1), family=socket.AF_INET
            )
        except OSError:
            t1.close()
            continue
        return port, t1, t2, collector
    raise OSError("no free RTP/RTCP port pair")


async def test_media_never_goes_quiet_while_waiting_for_digits_and_rtcp_reports_every_5_s(
    tmp_path: Path,
) -> None:
    # a short prompt, then 8.5 s of waiting for a digit that never comes: SBC inactivity
    # timers must see 50 packets/s throughout, and RTCP at 2.5 s and 7.5 s (RFC 3550 §6.2)
    apps.COLLECTED.clear()
    rtp = RtpCounter(answer=True, lost=range(100, 105))
    rtp_port, t1, t2, rtcp = await rtp_and_rtcp_ports(rtp)
    settings = {"prompt": "tone:440/200", "digits": 1, "digit_timeout": 8.5, "goodbye": ""}
    try:
        async with running_appserver(
            tmp_path, app={"handler": "tests.apps:prompt_and_record", "settings": settings}
        ) as server:
            result = await run_sipp(
                "-sf", scenario(tmp_path, "caller.xml", caller_scenario(rtp_port, None)),
                f"127.0.0.1:{sip_port(server)}", "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()),
                timeout=30,
            )  # fmt: skip
            assert result.ok, result.output[-2500:]
    finally:
        t1.close()
        t2.close()
    assert apps.COLLECTED == [""]  # the app waited the whole time out
    times = rtp.times()
    start, end = times[0], times[-1]
    assert 8.4 < end - start < 10.0, end - start
    # RTP: 50 packets/s from answer to hang-up, silence once the 200 ms tone was over
    rate = (len(times) - 1) / (end - start)
    assert 47 <= rate <= 53, rate
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.2, max(gaps)  # never quiet (an inactivity timer is 10 s or more)
    assert 8 <= rtp.silent.index(True) <= 11  # 10 packets of tone first
    assert all(rtp.silent[rtp.silent.index(True) :])
    assert len(rtp.ssrc) == 1
    (ssrc,) = rtp.ssrc
    # RTCP: SR + SDES every 5 s, the first after 2.5 s; SR + SDES + BYE at hang-up
    kinds = [[pt for pt, _, _ in packets(data)] for _, data in rtcp.reports]
    assert kinds == [[SR, 202], [SR, 202], [SR, 202, BYE]], kinds
    at = [t - start for t, _ in rtcp.reports]
    assert 2.0 < at[0] < 3.0 and 4.5 < at[1] - at[0] < 5.5, at
    for when, data in rtcp.reports:
        (_, count, body), *_ = packets(data)
        sender, _, _, _, sent, octets = struct.unpack_from("!IIIIII", body)
        assert sender == ssrc
        arrived = sum(1 for t in times if t <= when)
        assert arrived - 3 <= sent <= arrived + 1, (sent, arrived)  # what it had sent by then
        assert octets == 160 * sent
        # the report block: our stream, 5 packets lost (seq 100..104), highest seq seen
        assert count == 1
        about, _, lost, highest, _, _, _ = block(body, 24)
        assert about == 0x5150
        if when - start > 2.2:  # sent seq 0..N; 100..104 left out
            assert lost == 5, lost
            assert highest >= 105


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
    assert {pt for _, pt in counter.arrivals} == {0}  # PCMU, as answered
    tone = [t for t, silent in zip(counter.times(), counter.silent, strict=True) if not silent]
    assert 95 <= len(tone) <= 101  # 2 s of prompt at 20 ms
    rate = (len(tone) - 1) / (tone[-1] - tone[0])
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
