"""SDP (RFC 4566) for audio calls and the RFC 3264 offer/answer that voice apps need.

Only what an IVR needs: one audio stream, G.711 (PCMU 0, PCMA 8) and RFC 4733
telephone-event; direction attributes for hold (RFC 3264 §8.4).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import ParseError

CODECS = {0: "PCMU", 8: "PCMA"}  # static payload types, RFC 3551 Table 4
DTMF_PT = 101  # our dynamic payload type for telephone-event (RFC 4733)
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass
class AudioDescription:
    """The audio part of a session description."""

    address: str
    port: int
    payloads: list[int]  # in preference order
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "telephone-event/8000"
    direction: str = "sendrecv"
    ptime: int = 20
    rtcp_port: int | None = None  # a=rtcp (RFC 3605); None: the RTP port + 1

    @property
    def dtmf_pt(self) -> int | None:
        for pt, enc in self.rtpmap.items():
            if enc.lower().startswith("telephone-event/8000"):
                return pt
        return None

    @property
    def codec(self) -> int | None:
        """The first G.711 payload type in the description's order."""
        for pt in self.payloads:
            name = self.rtpmap.get(pt, CODECS.get(pt, "")).split("/")[0].upper()
            if name in ("PCMU", "PCMA"):
                return 0 if name == "PCMU" else 8
        return None

    @property
    def on_hold(self) -> bool:
        """RFC 3264 §8.4 (sendonly/inactive) or the RFC 2543 way (c=0.0.0.0)."""
        return self.direction in ("sendonly", "inactive") or self.address == "0.0.0.0"


def parse_sdp(body: bytes) -> AudioDescription:
    """The first audio stream of an SDP body; ParseError (→ 488) when there is none."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("SDP is not UTF-8", 400) from None
    session_addr = ""
    audio: AudioDescription | None = None
    direction = "sendrecv"
    in_audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "c":
            parts = value.split()
            if len(parts) < 3:
                raise ParseError("bad SDP c= line", 488)
            addr = parts[2].split("/")[0]
            if in_audio and audio is not None:
                audio.address = addr
            elif audio is None:
                session_addr = addr
        elif kind == "m":
            parts = value.split()
            if audio is not None:
                in_audio = False  # a later stream: ignore it
                continue
            if len(parts) >= 4 and parts[0] == "audio":
                try:
                    port = int(parts[1].split("/")[0])
                    pts = [int(p) for p in parts[3:]]
                except ValueError:
                    raise ParseError("bad SDP m= line", 488) from None
                if not 0 <= port <= 65535 or any(not 0 <= pt <= 127 for pt in pts):
                    raise ParseError("SDP m= port or payload type out of range", 488)
                audio = AudioDescription(session_addr, port, pts, direction=direction)
                in_audio = True
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if audio is None:
                    direction = name
                elif in_audio:
                    audio.direction = name
            elif in_audio and audio is not None:
                if name == "rtpmap":
                    pt, _, enc = arg.partition(" ")
                    if pt.isdigit():
                        audio.rtpmap[int(pt)] = enc.strip()
                elif name == "ptime" and arg.strip().isdigit():
                    audio.ptime = int(arg.strip())
                elif name == "rtcp":
                    port_text = arg.split(maxsplit=1)[0] if arg.strip() else ""
                    if port_text.isdigit() and 0 < int(port_text) <= 65535:
                        audio.rtcp_port = int(port_text)
    if audio is None:
        raise ParseError("SDP has no audio stream", 488)
    if not audio.address:
        raise ParseError("SDP has no connection address", 488)
    try:
        ipaddress.ip_address(audio.address)
    except ValueError:
        raise ParseError("SDP c= is not an IP address", 488) from None
    return audio


def acceptable_offer(offer: AudioDescription) -> AudioDescription:
    """The offer if we can answer it (RFC 3264 §6: a common codec), else ParseError(488).

    Checked when the INVITE arrives, so that a call we could never answer is refused
    before any 18x, while an SBC can still route it elsewhere.
    """
    if offer.codec is None:
        raise ParseError("no common codec (PCMU or PCMA) in the offer", 488)
    return offer


def build_sdp(
    address: str,
    port: int,
    payloads: list[int],
    *,
    dtmf_pt: int | None = DTMF_PT,
    direction: str = "sendrecv",
    session_id: int = 1,
    version: int = 1,
) -> bytes:
    family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    fmts = [*payloads, *([dtmf_pt] if dtmf_pt is not None else [])]
    lines = [
        "v=0",
        f"o=sipha {session_id} {version} IN {family} {address}",
        "s=sipha",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, fmts))}",
    ]
    lines += [f"a=rtpmap:{pt} {CODECS[pt]}/8000" for pt in payloads if pt in CODECS]
    if dtmf_pt is not None:
        lines += [f"a=rtpmap:{dtmf_pt} telephone-event/8000", f"a=fmtp:{dtmf_pt} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def answer_sdp(
    offer: AudioDescription, address: str, port: int, *, session_id: int = 1, version: int = 1
) -> tuple[bytes, int, int | None]:
    """RFC 3264 §6 answer: (body, chosen codec, telephone-event pt or None).

    Raises ParseError(488) when the offer has no G.711 codec.
    """
    codec = offer.codec
    if codec is None:
        raise ParseError("no common codec (PCMU or PCMA) in the offer", 488)
    dtmf = offer.dtmf_pt
    direction = ANSWER_DIRECTION.get(offer.direction, "sendrecv")
    if offer.address == "0.0.0.0":
        direction = "inactive" if offer.direction == "inactive" else "recvonly"
    body = build_sdp(
        address,
        port,
        [codec],
        dtmf_pt=dtmf,
        direction=direction,
        session_id=session_id,
        version=version,
    )
    return body, codec, dtmf


def offer_sdp(address: str, port: int, *, session_id: int = 1) -> bytes:
    """Our offer (late-offer INVITE: the offer goes in the 200, the answer in the ACK)."""
    return build_sdp(address, port, [0, 8], dtmf_pt=DTMF_PT, session_id=session_id)
