"""SDP offer/answer (RFC 3264), G.711 tables, RFC 4733 decoding, media sources."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from sipha.media.rtp import DtmfDecoder
from sipha.media.source import MediaError, frames
from sipha.sip import ParseError
from sipha.sip.sdp import answer_sdp, build_sdp, offer_sdp, parse_sdp

OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendrecv\r\n"


def test_answer_picks_the_offers_first_g711_and_its_dtmf_pt() -> None:
    offer = parse_sdp(OFFER)
    body, codec, dtmf = answer_sdp(offer, "127.0.0.1", 20000)
    assert (codec, dtmf) == (8, 96)
    answer = parse_sdp(body)
    assert answer.payloads == [8, 96] and answer.port == 20000 and answer.direction == "sendrecv"


@pytest.mark.parametrize(
    ("change", "direction", "held"),
    [
        ("a=sendrecv", "sendrecv", False),
        ("a=sendonly", "recvonly", True),
        ("a=inactive", "inactive", True),
    ],
)
def test_hold_directions(change: str, direction: str, held: bool) -> None:
    offer = parse_sdp(OFFER.replace(b"a=sendrecv", change.encode()))
    assert offer.on_hold is held
    assert parse_sdp(answer_sdp(offer, "127.0.0.1", 20000)[0]).direction == direction


def test_rfc2543_hold_with_zero_address() -> None:
    offer = parse_sdp(OFFER.replace(b"c=IN IP4 192.0.2.1", b"c=IN IP4 0.0.0.0"))
    assert offer.on_hold
    assert parse_sdp(answer_sdp(offer, "127.0.0.1", 20000)[0]).direction == "recvonly"


def test_no_common_codec_or_no_audio_is_488() -> None:
    with pytest.raises(ParseError) as err:
        answer_sdp(parse_sdp(OFFER.replace(b"RTP/AVP 8 0 96", b"RTP/AVP 18 96")), "127.0.0.1", 2)
    assert err.value.status == 488
    with pytest.raises(ParseError):
        parse_sdp(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 31\r\n")


def test_late_offer_offers_both_laws_and_telephone_event() -> None:
    o = parse_sdp(offer_sdp("::1", 20002))
    assert o.payloads == [0, 8, 101] and o.dtmf_pt == 101 and o.address == "::1"
    assert b"IN IP6 ::1" in build_sdp("::1", 1, [0])


def test_dtmf_decoder_one_digit_per_event() -> None:
    d = DtmfDecoder()
    pkt = lambda ev, end: struct.pack("!BBH", ev, 0x80 if end else 0, 160)  # noqa: E731
    assert d.feed(100, pkt(5, False)) == "5"
    assert d.feed(100, pkt(5, False)) is None  # same event, more packets
    assert d.feed(100, pkt(5, True)) is None  # end packets, sent three times
    assert d.feed(900, pkt(11, False)) == "#"
    assert d.feed(1700, pkt(12, False)) == "A"
    assert d.feed(2500, pkt(99, False)) is None  # not a DTMF event


def test_tone_silence_and_wav_frames(tmp_path: Path) -> None:
    assert len(list(frames("tone:440/100"))) == 5
    assert all(len(f) == 160 for f in frames("tone:350+440/60"))
    assert next(iter(frames("silence:40"))).tolist() == [0] * 160
    wav = tmp_path / "p.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x01\x00" * 400)  # 50 ms: three frames, the last padded
    out = list(frames(str(wav)))
    assert len(out) == 3 and out[2].tolist()[-1] == 0
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00" * 64)
    with pytest.raises(MediaError, match="need 8 kHz mono 16-bit"):
        list(frames(str(wav)))
    with pytest.raises(MediaError):
        list(frames("tone:9000"))
    with pytest.raises(MediaError):
        list(frames(str(tmp_path / "missing.wav")))
