"""RTCP (RFC 3550 §6) for one RTP session, sans-I/O: reception statistics and reports.

An SBC or a media server watching for dead calls looks at RTCP as well as RTP; a
session that never reports looks broken. This module keeps the receiver's view of the
remote stream (RFC 3550 Appendix A.1 sequence checks, A.3 loss, A.8 jitter), notes the
remote's sender reports (for LSR/DLSR, so the peer can measure the round trip), and builds
compound packets: SR (or RR while we send nothing) + SDES CNAME, and BYE at the end.

Times are passed in: ``now`` is a monotonic clock in seconds, ``wallclock`` POSIX time
for the NTP timestamp of a sender report.
"""

from __future__ import annotations

import secrets
import struct

INTERVAL = 5.0  # s between reports: RFC 3550 §6.2 minimum (Asterisk's rtcpinterval default)
FIRST_REPORT = INTERVAL / 2  # §6.2: the first report after half the minimum interval
CLOCK_RATE = 8000  # G.711 and telephone-event timestamps
NTP_EPOCH = 2_208_988_800  # s from 1900-01-01 (NTP) to 1970-01-01 (POSIX)

SR, RR, SDES, BYE = 200, 201, 202, 203
CNAME = 1  # SDES item type

MAX_DROPOUT = 3000  # Appendix A.1: a jump this far ahead is still the same stream
MAX_MISORDER = 100  # ... and this far behind a late packet
SEQ_MOD = 1 << 16


def ntp_timestamp(wallclock: float) -> tuple[int, int]:
    """(seconds, fraction) since 1900, as a sender report carries it."""
    seconds = int(wallclock)
    fraction = int((wallclock - seconds) * (1 << 32)) & 0xFFFFFFFF
    return (seconds + NTP_EPOCH) & 0xFFFFFFFF, fraction


class ReceptionStats:
    """The receiver's view of one remote source (one SSRC): what a report block says."""

    def __init__(self, ssrc: int, seq: int) -> None:
        self.ssrc = ssrc
        self._init(seq)
        self.jitter = 0.0  # in timestamp units (A.8)
        self._transit: int | None = None
        self.last_sr = 0  # middle 32 bits of the last SR's NTP timestamp (LSR)
        self.last_sr_at: float | None = None  # when it arrived (for DLSR)

    def _init(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self._bad_seq = SEQ_MOD + 1  # never a sequence number: no restart pending

    def update(self, seq: int, timestamp: int, now: float) -> bool:
        """Count one packet; False when it is not counted (a wild jump, A.1)."""
        delta = (seq - self.max_seq) % SEQ_MOD
        if delta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD  # the 16-bit sequence number wrapped
            self.max_seq = seq
        elif delta <= SEQ_MOD - MAX_MISORDER:
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) % SEQ_MOD
                return False
            self._init(seq)  # two in a row: the sender restarted its sequence
        # else a duplicate or a late packet: counted, max_seq unchanged
        self.received += 1
        arrival = int(now * CLOCK_RATE)
        transit = arrival - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < 1 << 31:  # a timestamp jump (a new talkspurt clock) is not jitter
                self.jitter += (d - self.jitter) / 16
        self._transit = transit
        return True

    def report_block(self, now: float) -> bytes:
        """RFC 3550 §6.4.1 report block (24 bytes); starts a new reporting interval."""
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        lost = max(-(1 << 23), min(expected - self.received, (1 << 23) - 1))
        expected_interval = expected - self.expected_prior
        lost_interval = expected_interval - (self.received - self.received_prior)
        self.expected_prior = expected
        self.received_prior = self.received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        dlsr = 0
        if self.last_sr_at is not None:
            dlsr = int((now - self.last_sr_at) * 65536) & 0xFFFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (fraction << 24) | (lost & 0xFFFFFF),
            extended_max & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF,
            self.last_sr,
            dlsr,
        )


def _header(count: int, packet_type: int, body: bytes) -> bytes:
    """V=2, no padding; length in 32-bit words minus one (§6.4.1)."""
    return struct.pack("!BBH", 0x80 | count, packet_type, (len(body) + 4) // 4 - 1) + body


def sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, CNAME, len(text)) + text + b"\x00"  # END item
    chunk += b"\x00" * (-len(chunk) % 4)  # the chunk ends on a 32-bit boundary
    return _header(1, SDES, chunk)


class RtcpSession:
    """What one RTP session reports and what it learns from the remote's reports."""

    def __init__(self, ssrc: int, cname: str | None = None) -> None:
        self.ssrc = ssrc
        # RFC 7022: a random CNAME per session (no user or host name leaks)
        self.cname = cname or secrets.token_urlsafe(12)
        self.remote: ReceptionStats | None = None
        self.reports_sent = 0
        self.remote_left = False  # the remote sent BYE

    def rtp_received(self, ssrc: int, seq: int, timestamp: int, now: float) -> None:
        if self.remote is None or self.remote.ssrc != ssrc:
            # a new source (an SBC re-anchored the media, the peer restarted): report it
            self.remote = ReceptionStats(ssrc, seq)
        self.remote.update(seq, timestamp, now)

    def rtcp_received(self, data: bytes, now: float) -> None:
        """Walk a compound packet: note an SR from the remote source, and a BYE."""
        offset = 0
        while offset + 8 <= len(data):
            first, packet_type, words = struct.unpack_from("!BBH", data, offset)
            if first >> 6 != 2:
                return  # not RTCP version 2
            end = offset + 4 * (words + 1)
            if end > len(data):
                return
            ssrc = struct.unpack_from("!I", data, offset + 4)[0]
            if packet_type == SR and end - offset >= 28:
                msw, lsw = struct.unpack_from("!II", data, offset + 8)
                if self.remote is not None and self.remote.ssrc == ssrc:
                    self.remote.last_sr = ((msw & 0xFFFF) << 16) | (lsw >> 16)
                    self.remote.last_sr_at = now
            elif packet_type == BYE:
                self.remote_left = True
            offset = end

    def report(
        self, now: float, wallclock: float, *, sending: bool, rtp_timestamp: int,
        packets: int, octets: int,
    ) -> bytes:  # fmt: skip
        """SR while we send RTP, else RR; with a report block once the remote sent any."""
        block = self.remote.report_block(now) if self.remote is not None else b""
        count = 1 if block else 0
        if sending:
            seconds, fraction = ntp_timestamp(wallclock)
            info = struct.pack(
                "!IIIIII", self.ssrc, seconds, fraction, rtp_timestamp & 0xFFFFFFFF,
                packets & 0xFFFFFFFF, octets & 0xFFFFFFFF,
            )  # fmt: skip
            first = _header(count, SR, info + block)
        else:
            first = _header(count, RR, struct.pack("!I", self.ssrc) + block)
        self.reports_sent += 1
        return first + sdes_cname(self.ssrc, self.cname)

    def goodbye(self, report: bytes) -> bytes:
        """The last compound packet: a report, then BYE (§6.6)."""
        return report + _header(1, BYE, struct.pack("!I", self.ssrc))
