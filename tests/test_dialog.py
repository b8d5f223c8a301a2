"""Dialogs (RFC 3261 §12): creation on both sides, route sets, CSeq, target refresh."""

from __future__ import annotations

from sipha.sip import Headers, Request, make_response, parse
from sipha.sip.dialog import Dialog, DialogState


def invite() -> Request:
    h = Headers.of(
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa"),
        ("From", '"A" <sip:alice@a.example>;tag=ta'),
        ("To", "<sip:bob@b.example>"),
        ("Call-ID", "d1"),
        ("CSeq", "10 INVITE"),
        ("Contact", "<sip:alice@192.0.2.1>"),
        ("Record-Route", "<sip:p2.example;lr>"),
        ("Record-Route", "<sip:p1.example;lr>"),
    )
    req = parse(bytes(Request("INVITE", "sip:bob@b.example", h)))
    assert isinstance(req, Request)
    return req


def ok(req: Request, status: int = 200) -> object:
    resp = make_response(req, status, to_tag="tb")
    resp.headers.add("Contact", "<sip:bob@192.0.2.2:5070>")
    return parse(bytes(resp))


def test_uac_dialog_reverses_record_route_and_builds_requests() -> None:
    req = invite()
    d = Dialog.from_uac(req, ok(req))  # type: ignore[arg-type]
    assert d.id == ("d1", "ta", "tb") and d.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    bye = d.create_request("BYE")
    assert bye.uri_text == "sip:bob@192.0.2.2:5070"
    assert bye.cseq == (11, "BYE")
    assert [str(r.uri) for r in bye.route] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert bye.from_.tag == "ta" and bye.to.tag == "tb"
    ack = d.create_ack(10)
    assert ack.cseq == (10, "ACK")
    assert d.create_request("INFO").cseq.number == 12


def test_uas_dialog_keeps_record_route_order_and_checks_cseq() -> None:
    req = invite()
    d = Dialog.from_uas(req, "tb", confirmed=True)
    assert d.id == ("d1", "tb", "ta")
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example;lr", "sip:p1.example;lr"]
    assert d.remote_seq == 10
    bye = d.create_request("BYE")
    assert bye.uri_text == "sip:alice@192.0.2.1" and bye.cseq.number == 1
    later = invite()
    later.headers.set("CSeq", "11 INVITE")
    later.headers.set("Contact", "<sip:alice@192.0.2.99>")
    assert d.receive_request(later) is None
    assert str(d.remote_target) == "sip:alice@192.0.2.99"  # target refresh
    older = invite()
    older.headers.set("CSeq", "5 INFO")
    assert d.receive_request(older) == 500


def test_early_dialog_from_18x_confirmed_by_2xx() -> None:
    req = invite()
    d = Dialog.from_uac(req, ok(req, 180))  # type: ignore[arg-type]
    assert d.state is DialogState.EARLY
    d.receive_response(req, ok(req, 200))  # type: ignore[arg-type]
    assert d.state is DialogState.CONFIRMED


def test_strict_router_in_route_set() -> None:
    req = invite()
    req.headers.set("Record-Route", "<sip:strict.example>")
    d = Dialog.from_uas(req, "tb", confirmed=True)
    bye = d.create_request("BYE")
    assert bye.uri_text == "sip:strict.example"
    assert [str(r.uri) for r in bye.route] == ["sip:alice@192.0.2.1"]
