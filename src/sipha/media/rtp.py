"""RTP sessions (RFC 3550) for one call: paced sending, RFC 4733 DTMF receiving.

Packets leave every 20 ms against the loop clock (not sleep-after-send), so pacing does
not drift with load. A session that is on hold or closed sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from array import array
from collections.abc import Iterable

from . import g711

log = logging.getLogger("sipha.media")

PTIME = 0.020  # s per packet, RFC 3551 §4.5 default for G.711
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 §3.2 event codes 0..15


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


class RtpSession(asyncio.DatagramProtocol):
    """One bound RTP port: send G.711 to the remote, receive media and DTMF."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.local_port = 0
        self.remote: tuple[str, int] | None = None
        self.payload_type = 0
        self.dtmf_pt: int | None = None
        self.on_hold = False
        self.closed = False
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self.packets_sent = 0
        self.packets_received = 0
        self.digits: asyncio.Queue[str] = asyncio.Queue()
        self._dtmf = DtmfDecoder()
        self._marker = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return  # not RTP version 2
        self.packets_received += 1
        pt = data[1] & 0x7F
        if self.dtmf_pt is not None and pt == self.dtmf_pt:
            cc = data[0] & 0x0F
            offset = 12 + 4 * cc
            ts = struct.unpack_from("!I", data, 4)[0]
            digit = self._dtmf.feed(ts, data[offset:])
            if digit is not None:
                self.digits.put_nowait(digit)

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
        self.timestamp += 160
        return header + payload

    async def play(self, frames: Iterable[array], stop: asyncio.Event) -> int:  # type: ignore[type-arg]
        """Send frames paced at 20 ms until done or ``stop`` is set; returns frames sent."""
        loop = asyncio.get_running_loop()
        sent = 0
        next_at = loop.time()
        self._marker = True
        for frame in frames:
            if stop.is_set() or self.closed:
                break
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            next_at += PTIME
            if self.on_hold or self.remote is None or self.transport is None:
                self.timestamp += 160  # time passes while held: keep the clock honest
                continue
            self.transport.sendto(self._packet(g711.encode(frame, self.payload_type)), self.remote)
            self.packets_sent += 1
            sent += 1
        return sent

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PortPool:
    """Even RTP ports from a configured range (RFC 3550 §11: RTP on even ports)."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low + (low % 2)
        self.high = high
        self._next = self.low

    async def open(self, address: str) -> RtpSession:
        loop = asyncio.get_running_loop()
        span = (self.high - self.low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next = self._next + 2 if self._next + 2 <= self.high else self.low
            try:
                _, session = await loop.create_datagram_endpoint(
                    RtpSession, local_addr=(address, port)
                )
            except OSError:
                continue
            session.local_port = port
            return session
        raise OSError(f"no free RTP port in {self.low}-{self.high}")
