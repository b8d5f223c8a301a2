"""Message model: headers multi-map, compact forms, lists, building, framing."""

from __future__ import annotations

import pytest

from sipha.sip import Headers, ParseError, Request, Response, make_response, parse
from sipha.sip.framing import KeepAlive, StreamFramer

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"v: SIP/2.0/TCP proxy.example.com:5061;branch=z9hG4bK2;received=192.0.2.9\r\n"
    b"Max-Forwards: 70\r\n"
    b't: "Bob" <sip:bob@example.com>\r\n'
    b"f: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p3.example.com;lr>\r\n"
    b"m: <sip:alice@pc33.example.com>;expires=60;q=0.5, sip:a2@192.0.2.1\r\n"
    b"k: 100rel, timer\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n\r\n"
    b"v=0\r"
)


def test_compact_forms_and_typed_access() -> None:
    m = parse(INVITE)
    assert isinstance(m, Request)
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.cseq == (314159, "INVITE")
    assert [v.branch for v in m.via] == ["z9hG4bK776asdhds", "z9hG4bK2"]
    assert m.via[0].wants_rport and m.via[0].rport is None
    assert m.via[1].received == "192.0.2.9" and m.via[1].port == 5061
    assert m.to.display_name == "Bob" and m.to.tag is None
    assert m.from_.display_name == "Alice" and m.from_.tag == "1928301774"
    assert [str(r.uri) for r in m.record_route] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
        "sip:p3.example.com;lr",
    ]
    c1, c2 = m.contact
    assert (c1.expires, c1.q) == (60, 0.5) and c2.expires is None
    assert m.headers.get_all("Supported") == ["100rel", "timer"]
    assert m.headers.get("SUPPORTED") == "100rel, timer"
    assert m.content_type == "application/sdp"
    assert m.body == b"v=0\r"
    m.validate()


def test_serialisation_round_trip_keeps_every_header_in_order() -> None:
    m = parse(INVITE)
    again = parse(bytes(m))
    assert [n for n, _ in again.headers] == [n for n, _ in m.headers]
    assert again.body == m.body
    assert bytes(again) == bytes(m)


def test_header_changes_invalidate_cached_values() -> None:
    m = parse(INVITE)
    assert m.via[0].host == "pc33.example.com"
    m.headers.add_first("Via", "SIP/2.0/UDP edge.example.com;branch=z9hG4bKnew")
    assert m.via[0].host == "edge.example.com" and len(m.via) == 3
    assert m.headers.pop_first_value("Via") == "SIP/2.0/UDP edge.example.com;branch=z9hG4bKnew"
    assert m.headers.pop_first_value("Record-Route") == "<sip:p1.example.com;lr>"
    assert len(m.record_route) == 2
    m.headers.set_first_value("Via", "SIP/2.0/UDP x.example.com;branch=z9hG4bKx")
    assert m.via[0].host == "x.example.com" and len(m.via) == 2
    with pytest.raises(ValueError):
        m.headers.add("X-Evil", "a\r\nVia: injected")


def test_make_response_copies_rfc3261_fields_and_adds_tag() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 180, to_tag="abc")
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert len(resp.via) == 2 and resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.to.tag == "abc" and resp.from_.tag == "1928301774"
    assert len(resp.record_route) == 3
    trying = make_response(req, 100, to_tag="abc")
    assert trying.to.tag is None and "record-route" not in trying.headers
    assert isinstance(parse(bytes(resp)), Response)


def test_headers_of_and_counting() -> None:
    h = Headers.of(("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("v", "SIP/2.0/UDP b;branch=z9hG4bK2"))
    assert h.count("via") == 2 and "V" in h and len(h) == 2
    assert h.remove("Via") == 2 and "via" not in h


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP x\r\n\r\n", "without name and colon"),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", "no empty line"),
        (b"INVITE sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n", "bad header name"),
        (b"INVITE sip:a@b SIP/2.0\r\n folded: x\r\n\r\n", "continuation line"),
        (b"SIP/2.0 20 OK\r\n\r\n", "status code"),
        (b"SIP/3.0 200 OK\r\n\r\n", "version"),
        (b"INV<ITE sip:a@b SIP/2.0\r\n\r\n", "not a token"),
    ],
)
def test_malformed_messages(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse(data)
    assert reason in err.value.reason


def test_stream_requires_content_length_datagram_does_not() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nbody"
    assert parse(data).body == b"body"
    with pytest.raises(ParseError, match="Content-Length"):
        parse(data, datagram=False)


def test_leading_crlf_before_start_line_is_ignored() -> None:
    m = parse(b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n")
    assert isinstance(m, Request) and m.method == "OPTIONS"


class TestFramer:
    MSG = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 5\r\n\r\nhello"

    def test_partial_reads_are_kept(self) -> None:
        f = StreamFramer()
        out: list[object] = []
        for i in range(len(self.MSG)):
            out += f.feed(self.MSG[i : i + 1])
        assert out == [self.MSG] and f.pending == 0

    def test_two_messages_in_one_read_and_keepalives(self) -> None:
        f = StreamFramer()
        out = f.feed(b"\r\n\r\n" + self.MSG + self.MSG[:10])
        assert out == [KeepAlive.PING, self.MSG]
        assert f.feed(self.MSG[10:] + b"\r\n") == [self.MSG, KeepAlive.PONG]

    def test_compact_content_length(self) -> None:
        msg = self.MSG.replace(b"Content-Length", b"l")
        assert StreamFramer().feed(msg) == [msg]

    def test_missing_content_length_and_oversize_are_errors(self) -> None:
        with pytest.raises(ParseError, match="missing Content-Length"):
            StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n")
        with pytest.raises(ParseError, match="size limit"):
            StreamFramer(max_size=100).feed(self.MSG.replace(b"5\r\n", b"500\r\n"))
        with pytest.raises(ParseError, match="size limit"):
            StreamFramer(max_size=100).feed(b"X" * 200)
