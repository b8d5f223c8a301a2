"""RTP sessions (RFC 3550) for one call: paced sending, RFC 4733 DTMF receiving, RTCP.

Media never stops while a call is up and not held: between prompts (while the app waits
for digits, say) a session sends G.711 silence, 50 packets/s, because SBCs and carriers
hang up calls whose media went quiet (RTP inactivity timers; G.711 silence rather than
RFC 3389 comfort noise, which needs a CN payload type the caller may not have offered).
RTCP sender or receiver reports go to the remote every 5 s (:mod:`sipha.media.rtcp`).

One 20 ms clock (:class:`MediaClock`) drives every session of the process: one timer
wake-up per 20 ms in all, not one per call, and pacing against the loop clock (not
sleep-after-send), so it does not drift with load. A session on hold sends no RTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import struct
import time
from array import array
from collections.abc import Iterable, Iterator

from . import g711
from .rtcp import FIRST_REPORT, INTERVAL, RtcpSession
from .source import FRAME

log = logging.getLogger("sipha.media")

PTIME = 0.020  # s per packet, RFC 3551 §4.5 default for G.711
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 §3.2 event codes 0..15
MAX_CATCH_UP = 0.2  # s: a clock later than this skips ahead rather than bursting


@functools.cache
def _silence(payload_type: int) -> bytes:
    """20 ms of G.711 silence (PCMU 0xFF, PCMA 0xD5), encoded once."""
    return g711.encode(array("h", bytes(FRAME * 2)), payload_type)


class DtmfDecoder:
    """RFC 4733 events to digits: each event (one RTP timestamp) gives one digit."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        if len(payload) < 4 or timestamp in self._seen:
            return None
        event = payload[0]
        if event >= len(DTMF_EVENTS):
            return None
        self._seen.add(timestamp)
        if len(self._seen) > 256:
            self._seen = {timestamp}
        return DTMF_EVENTS[event]


class MediaClock:
    """The 20 ms tick for every running session (each sends one packet per tick)."""

    def __init__(self) -> None:
        self._sessions: set[RtpSession] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, session: RtpSession) -> None:
        self._sessions.add(session)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, session: RtpSession) -> None:
        self._sessions.discard(session)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self._sessions:
            next_at += PTIME
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -MAX_CATCH_UP:
                next_at = loop.time()  # a stall: skip ahead, never a burst of packets
            now = loop.time()
            for session in list(self._sessions):
                try:
                    session.tick(now)
                except Exception:  # one broken session must not silence the others
                    log.exception("media tick failed; session closed")
                    session.close()


class _RtcpPort(asyncio.DatagramProtocol):
    """The RTCP socket (the RTP port + 1, RFC 3550 §11) of one session."""

    def __init__(self, session: RtpSession) -> None:
        self.session = session
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.session.rtcp.rtcp_received(data, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP unreachable: the remote has no RTCP port; reports go on regardless


class RtpSession(asyncio.DatagramProtocol):
    """One bound RTP port (and its RTCP port): send G.711 to the remote, receive media
    and DTMF, report both ways."""

    def __init__(self, clock: MediaClock | None = None) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_port: _RtcpPort | None = None
        self.clock = clock or MediaClock()
        self.local_port = 0
        self.remote: tuple[str, int] | None = None
        self.rtcp_remote: tuple[str, int] | None = None
        self.payload_type = 0
        self.dtmf_pt: int | None = None
        self.on_hold = False
        self.closed = False
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets, for the sender report
        self.silence_sent = 0  # packets of silence (no prompt playing)
        self.packets_received = 0
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self.rtcp = RtcpSession(self.ssrc)
        self._dtmf = DtmfDecoder()
        self._marker = True
        self._running = False
        self._rtcp_due = 0.0
        self._source: Iterator[array] | None = None  # type: ignore[type-arg]
        self._source_done: asyncio.Future[None] | None = None
        self._played = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return  # not RTP version 2
        self.packets_received += 1
        seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
        self.rtcp.rtp_received(ssrc, seq, ts, time.monotonic())
        pt = data[1] & 0x7F
        if self.dtmf_pt is not None and pt == self.dtmf_pt:
            cc = data[0] & 0x0F
            offset = 12 + 4 * cc
            digit = self._dtmf.feed(ts, data[offset:])
            if digit is not None:
                self.digits.put_nowait(digit)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a remote that is gone: the call's signalling decides

    def set_remote(self, address: str, port: int, rtcp_port: int | None = None) -> None:
        """Where media goes; RTCP to ``rtcp_port`` (SDP a=rtcp, RFC 3605) or port + 1."""
        self.remote = (address, port)
        self.rtcp_remote = (address, rtcp_port if rtcp_port is not None else port + 1)

    def start(self) -> None:
        """Media runs from now on (an answer or early media went out): a packet every
        20 ms until :meth:`close`, silence when nothing plays."""
        if self._running or self.closed:
            return
        self._running = True
        self._marker = True
        self._rtcp_due = asyncio.get_running_loop().time() + FIRST_REPORT
        self.clock.add(self)

    # -- the clock's side -----------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One 20 ms step: the next frame of what plays (or silence), and RTCP when due."""
        if self.closed:
            return
        frame = None
        if self._source is not None:
            frame = next(self._source, None)
            if frame is None:
                self._finish_source()
        if now >= self._rtcp_due:
            self._rtcp_due = now + INTERVAL
            self._send_rtcp(self._report(now))
        if self.on_hold or self.remote is None or self.transport is None:
            self.timestamp += FRAME  # time passes while held: keep the clock honest
            self._marker = True  # media resumes with a new talkspurt
            return
        if frame is None:
            payload = _silence(self.payload_type)
            self.silence_sent += 1
        else:
            payload = g711.encode(frame, self.payload_type)
            self._played += 1
        self.transport.sendto(self._packet(payload), self.remote)
        self.packets_sent += 1
        self.octets_sent += len(payload)

    def _report(self, now: float) -> bytes:
        return self.rtcp.report(
            now, time.time(), sending=self.packets_sent > 0 and not self.on_hold,
            rtp_timestamp=self.timestamp, packets=self.packets_sent, octets=self.octets_sent,
        )  # fmt: skip

    def _send_rtcp(self, data: bytes) -> None:
        port = self.rtcp_port
        if port is not None and port.transport is not None and self.rtcp_remote is not None:
            port.transport.sendto(data, self.rtcp_remote)

    def _packet(self, payload: bytes) -> bytes:
        header = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if self._marker else 0) | self.payload_type,
            self.seq & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self._marker = False
        self.seq += 1
        self.timestamp += FRAME
        return header + payload

    def _finish_source(self) -> None:
        self._source = None
        done, self._source_done = self._source_done, None
        if done is not None and not done.done():
            done.set_result(None)

    # -- the call's side ------------------------------------------------------------------
    async def play(self, frames: Iterable[array], stop: asyncio.Event) -> int:  # type: ignore[type-arg]
        """Send frames paced at 20 ms until done or ``stop`` is set; returns frames sent."""
        if self.closed:
            return 0
        self._finish_source()  # a new prompt replaces one still playing
        self.start()
        done = asyncio.get_running_loop().create_future()
        self._source, self._source_done, self._played = iter(frames), done, 0
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if self._source_done is done:
                self._finish_source()
        return self._played

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish_source()
        self.clock.discard(self)
        if self._running:  # RFC 3550 §6.6: say goodbye
            now = asyncio.get_running_loop().time()
            self._send_rtcp(self.rtcp.goodbye(self._report(now)))
        if self.transport is not None:
            self.transport.close()
        if self.rtcp_port is not None and self.rtcp_port.transport is not None:
            self.rtcp_port.transport.close()


class PortPool:
    """Even RTP ports from a configured range, each with the odd port above it for RTCP
    (RFC 3550 §11); one media clock for all the sessions it opens."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low + (low % 2)
        self.high = high
        self._next = self.low
        self.clock = MediaClock()

    async def open(self, address: str) -> RtpSession:
        loop = asyncio.get_running_loop()
        span = (self.high - self.low + 1) // 2  # port pairs in the range
        for _ in range(span):
            port = self._next
            self._next = self._next + 2 if self._next + 3 <= self.high else self.low
            try:
                _, session = await loop.create_datagram_endpoint(
                    lambda: RtpSession(self.clock), local_addr=(address, port)
                )
            except OSError:
                continue
            try:
                _, rtcp = await loop.create_datagram_endpoint(
                    functools.partial(_RtcpPort, session), local_addr=(address, port + 1)
                )
            except OSError:
                session.close()
                continue
            session.local_port = port
            session.rtcp_port = rtcp
            return session
        raise OSError(f"no free RTP/RTCP port pair in {self.low}-{self.high}")
