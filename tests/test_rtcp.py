"""RTCP reports (RFC 3550 §6.4, Appendix A), sans-I/O: what a report block says about the
stream received, and the layout of the compound packets."""

from __future__ import annotations

import struct

from sipha.media.rtcp import BYE, RR, SDES, SR, RtcpSession, ntp_timestamp


def packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(packet type, count, body) of each packet of a compound RTCP packet."""
    out = []
    offset = 0
    while offset < len(data):
        first, pt, words = struct.unpack_from("!BBH", data, offset)
        assert first >> 6 == 2, "version 2"
        assert not first & 0x20, "no padding"
        end = offset + 4 * (words + 1)
        assert end <= len(data), "length within the datagram"
        out.append((pt, first & 0x1F, data[offset + 4 : end]))
        offset = end
    assert offset == len(data)
    return out


def block(body: bytes, at: int) -> tuple[int, int, int, int, int, int, int]:
    ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, at)
    lost = lost_word & 0xFFFFFF
    return ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr


def test_a_sender_report_counts_what_was_sent_and_names_its_cname() -> None:
    rtcp = RtcpSession(0x11223344, cname="abc")
    data = rtcp.report(10.0, 1_700_000_000.25, sending=True, rtp_timestamp=4242,
                       packets=250, octets=40_000)  # fmt: skip
    (pt, count, body), (pt2, chunks, sdes) = packets(data)
    assert (pt, count) == (SR, 0)  # nothing received yet: no report block
    ssrc, msw, lsw, ts, n, octets = struct.unpack("!IIIIII", body)
    assert (ssrc, ts, n, octets) == (0x11223344, 4242, 250, 40_000)
    assert (msw, lsw) == ntp_timestamp(1_700_000_000.25)
    assert msw == 1_700_000_000 + 2_208_988_800 and lsw == 1 << 30
    assert (pt2, chunks) == (SDES, 1)
    assert sdes == struct.pack("!IBB", 0x11223344, 1, 3) + b"abc" + b"\x00" * 3
    assert rtcp.reports_sent == 1


def test_loss_wrap_and_the_round_trip_fields_of_a_report_block() -> None:
    rtcp = RtcpSession(1)
    # 100 packets with 5 missing (seq 65500..65599 wraps at 65536), on time
    for i in range(100):
        if 40 <= i < 45:
            continue
        rtcp.rtp_received(0xBEEF, (65500 + i) % 65536, 1000 + 160 * i, 1.0 + 0.02 * i)
    # the remote's sender report: its NTP middle 32 bits come back as LSR, with the delay
    sr = struct.pack("!BBHIIIIII", 0x80, SR, 6, 0xBEEF, 0x00012345, 0x67890000, 0, 0, 0)
    rtcp.rtcp_received(sr, 3.0)
    (pt, count, body), _ = packets(rtcp.report(3.5, 0.0, sending=False, rtp_timestamp=0,
                                               packets=0, octets=0))  # fmt: skip
    assert (pt, count) == (RR, 1)
    assert struct.unpack_from("!I", body)[0] == 1
    ssrc, fraction, lost, highest, jitter, lsr, dlsr = block(body, 4)
    assert ssrc == 0xBEEF
    assert lost == 5 and fraction == 5 * 256 // 100
    assert highest == 65536 + (65500 + 99) % 65536  # one wrap in the extended number
    assert jitter == 0  # every packet arrived exactly 20 ms after the previous one
    assert lsr == 0x23456789
    assert dlsr == 65536 // 2  # 0.5 s in 1/65536 s
    # the next interval: nothing new lost, so the fraction is 0 and the total stays 5
    for i in range(100, 150):
        rtcp.rtp_received(0xBEEF, (65500 + i) % 65536, 1000 + 160 * i, 1.0 + 0.02 * i)
    (_, _, body), _ = packets(rtcp.report(4.0, 0.0, sending=False, rtp_timestamp=0,
                                          packets=0, octets=0))  # fmt: skip
    _, fraction, lost, *_ = block(body, 4)
    assert (fraction, lost) == (0, 5)


def test_jitter_grows_with_uneven_arrival_and_a_new_source_restarts_the_count() -> None:
    rtcp = RtcpSession(1)
    for i in range(50):
        late = 0.010 if i % 2 else 0.0  # every other packet 10 ms late: 80 timestamp units
        rtcp.rtp_received(7, i, 160 * i, 0.02 * i + late)
    assert rtcp.remote is not None and 60 < rtcp.remote.jitter < 80
    rtcp.rtp_received(8, 5000, 0, 2.0)  # another SSRC (re-anchored media)
    assert rtcp.remote.ssrc == 8 and rtcp.remote.received == 1


def test_a_wild_sequence_jump_is_ignored_once_and_taken_as_a_restart_twice() -> None:
    rtcp = RtcpSession(1)
    for i in range(10):
        rtcp.rtp_received(7, 100 + i, 160 * i, 0.02 * i)
    stats = rtcp.remote
    assert stats is not None
    rtcp.rtp_received(7, 30000, 0, 1.0)  # a stray packet far ahead: not counted
    assert stats.received == 10 and stats.max_seq == 109
    rtcp.rtp_received(7, 30001, 160, 1.02)  # the sender really restarted its numbering
    assert stats.base_seq == 30001 and stats.received == 1


def test_goodbye_is_a_report_then_bye_and_a_remote_bye_is_noted() -> None:
    rtcp = RtcpSession(0xABCDEF01)
    data = rtcp.goodbye(rtcp.report(1.0, 0.0, sending=True, rtp_timestamp=0, packets=1,
                                    octets=160))  # fmt: skip
    kinds = [(pt, count) for pt, count, _ in packets(data)]
    assert kinds == [(SR, 0), (SDES, 1), (BYE, 1)]
    assert packets(data)[-1][2] == struct.pack("!I", 0xABCDEF01)
    other = RtcpSession(2)
    other.rtcp_received(data, 2.0)
    assert other.remote_left
    other.rtcp_received(b"\x00" * 12, 2.0)  # not RTCP v2: ignored
    other.rtcp_received(data[:10], 2.0)  # truncated: ignored
