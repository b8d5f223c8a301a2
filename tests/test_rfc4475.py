"""RFC 4475 (SIP torture tests) and RFC 5118 (IPv6 torture tests) against the parser.

Each valid message parses and validates with the values the RFC describes; each invalid
one raises ParseError from ``parse()`` or ``validate()`` with the status the RFC asks for.
"""

from __future__ import annotations

import pytest

from sipha.sip import ParseError, Request, Response, SipURI, TelURI, parse
from sipha.sip.uri import AbsoluteURI
from tests.vectors.load import load, names


def parsed(name: str, folder: str = "rfc4475") -> Request | Response:
    msg = parse(load(folder, name))
    msg.validate()
    return msg


# -- 3.1.1 valid messages -----------------------------------------------------------------


def test_wsinv_short_tortuous_invite() -> None:
    m = parsed("wsinv")
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert isinstance(m.uri, SipURI)
    assert (m.uri.user, m.uri.host, m.uri.params) == (
        "vivekg",
        "chair-dnrc.example.com",
        {"unknownparam": None},
    )
    assert m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (m.cseq.number, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = m.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert contact.q == 0.33
    (route,) = m.route
    assert route.uri.lr  # type: ignore[attr-defined]
    assert len(m.body) == 150 and m.body.startswith(b"v=0\r\n")


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = parsed("intmeth")
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.method == m.method
    assert isinstance(m.uri, SipURI)
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работаю"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert m.via[0].branch == "z9hG4bK-.!%66*_+`'~"


def test_esc01_valid_percent_escapes() -> None:
    m = parsed("esc01")
    assert isinstance(m, Request) and isinstance(m.uri, SipURI)
    assert m.uri.user == "sips:user@example.com"
    assert m.uri.host == "example.net"
    assert m.to.uri.user == "user"  # type: ignore[attr-defined]
    assert m.from_.uri.user == "I have spaces"  # type: ignore[attr-defined]
    (c,) = m.contact
    assert c.uri.user == "caller"  # type: ignore[attr-defined]
    # escaped parameter names and values compare equal to their unescaped forms
    assert c.uri == SipURI(
        host="host5.example.net", user="caller", params={"lr": None, "name": "value%2541"}
    )
    assert m.content_type == "application/sdp"


def test_escnull_escaped_nulls() -> None:
    m = parsed("escnull")
    assert m.to.uri.user == "null-\x00-null"  # type: ignore[attr-defined]
    assert [c.uri.user for c in m.contact] == ["\x00", "\x00\x00"]  # type: ignore[attr-defined]


def test_esc02_percent_that_is_not_an_escape() -> None:
    m = parsed("esc02")
    assert isinstance(m, Request)
    assert m.method == "RE%47IST%45R"
    assert m.to.display_name == "%Z%45"
    assert m.via[0].branch == "z9hG4bK209%fzsnel234"
    # "C%6Fntact" is a different (unknown) header, not Contact
    assert [c.uri.host for c in m.contact] == ["host1.example.com", "host3.example.com"]  # type: ignore[attr-defined]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_space_before_angle() -> None:
    m = parsed("lwsdisp")
    assert m.from_.display_name == "caller"
    assert m.from_.tag == "323"


def test_longreq_long_values() -> None:
    m = parsed("longreq")
    assert len(m.via) == 34
    assert m.via[-1].received == "192.0.2.5"
    assert m.via[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert m.to.uri.port == 6000  # type: ignore[attr-defined]
    assert m.from_.tag == "12" + "982" * 45 + "424"
    assert len(m.body) == 150


def test_dblreq_trailing_octets_in_datagram_ignored() -> None:
    m = parsed("dblreq")
    assert isinstance(m, Request)
    assert m.method == "REGISTER" and m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_semiuri_semicolon_in_user_part() -> None:
    m = parsed("semiuri")
    assert isinstance(m, Request) and isinstance(m.uri, SipURI)
    assert m.uri.user == "user;par=u@example.net"
    assert m.uri.host == "example.com" and m.uri.params == {}
    assert m.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_varied_and_unknown() -> None:
    m = parsed("transports")
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_multipart_body() -> None:
    m = parsed("mpart01")
    assert bytes(range(256)) in m.body
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert m.content_type == "multipart/mixed"


def test_unreason_unusual_reason_phrase() -> None:
    m = parsed("unreason")
    assert isinstance(m, Response)
    assert m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"


def test_noreason_empty_reason_phrase() -> None:
    m = parsed("noreason")
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")


# -- 3.1.2 invalid messages ---------------------------------------------------------------

INVALID = {
    "badinv01": "comma-separated",
    "clerr": "Content-Length 9999",
    "ncl": "Content-Length",
    "scalar02": "CSeq number",
    "scalarlg": "CSeq number",
    "quotbal": "quoted",
    "ltgtruri": "<>",
    "lwsruri": "request line",
    "lwsstart": "request line",
    "trws": "request line",
    "escruri": "headers",
    "baddate": "Date",
    "regbadct": "must be in <>",
    "badaspec": "white space inside <>",
    "baddn": "must be quoted",
    "mismatch01": "does not match",
    "mismatch02": "does not match",
    "bigcode": "status code",
    "insuf": "missing",
    "multi01": "more than one",
    "mcl01": "more than one Content-Length",
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_message_is_refused_with_reason(name: str) -> None:
    with pytest.raises(ParseError) as err:
        parsed(name)
    assert INVALID[name] in err.value.reason
    assert err.value.status == 400
    assert "\r" not in err.value.reason_phrase


def test_badvers_gets_505() -> None:
    with pytest.raises(ParseError) as err:
        parsed("badvers")
    assert err.value.status == 505


# -- 3.2 / 3.3 / 3.4 semantics: parse fine, the element decides ---------------------------


def test_badbranch_magic_cookie_only() -> None:
    assert parsed("badbranch").via[0].branch == "z9hG4bK"


def test_unknown_schemes_parse_as_opaque_uris() -> None:
    m = parsed("unkscm")
    assert isinstance(m, Request) and isinstance(m.uri, AbsoluteURI)
    assert m.uri.scheme == "nobodyknowsthisscheme"
    n = parsed("novelsc")
    assert isinstance(n, Request) and n.uri.scheme == "soap.beep"
    u = parsed("unksm2")
    assert u.to.uri.scheme == "isbn" and u.from_.uri.scheme == "http"
    assert u.contact[0].uri.scheme == "name"


def test_bext01_require_lists() -> None:
    m = parsed("bext01")
    assert m.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.headers.get_all("Proxy-Require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def test_other_semantic_vectors_parse() -> None:
    assert parsed("invut").content_type == "application/unknownformat"
    assert parsed("regaut01").headers.get("Authorization", "").startswith("NoOneKnows")
    assert parsed("sdp01").headers.get("Accept") == "text/nobodyKnowsThis"
    assert parsed("bcast").via[1].host == "255.255.255.255"
    assert parsed("zeromf").max_forwards == 0


def test_cparam_contact_parameters() -> None:
    c1 = parsed("cparam01").contact[0]
    assert c1.params == {"unknownparam": None}
    assert isinstance(c1.uri, SipURI) and c1.uri.params == {}
    c2 = parsed("cparam02").contact[0]
    assert c2.params == {}
    assert isinstance(c2.uri, SipURI) and c2.uri.params == {"unknownparam": None}


def test_regescrt_escaped_header_in_contact_uri() -> None:
    (c,) = parsed("regescrt").contact
    assert isinstance(c.uri, SipURI)
    assert c.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}


def test_inv2543_rfc2543_syntax() -> None:
    m = parsed("inv2543")
    assert m.via[0].branch is None
    assert m.max_forwards is None
    assert m.body.endswith(b"RTP/AVP 0\r\n")
    assert m.record_route[0].uri.maddr == "ss1.example.com"  # type: ignore[attr-defined]


def test_every_vector_file_is_covered() -> None:
    covered = set(INVALID) | {
        "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
        "semiuri", "transports", "mpart01", "unreason", "noreason", "badvers", "badbranch",
        "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01", "sdp01", "bcast",
        "zeromf", "cparam01", "cparam02", "regescrt", "inv2543",
    }  # fmt: skip
    assert set(names("rfc4475")) == covered


# -- RFC 5118 -----------------------------------------------------------------------------


def test_rfc5118_ipv6_good_and_port_forms() -> None:
    m = parsed("ipv6-good", "rfc5118")
    assert isinstance(m, Request) and isinstance(m.uri, SipURI)
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10]", None)
    assert m.contact[0].uri.host == "[2001:db8::1]"  # type: ignore[attr-defined]
    amb = parsed("port-ambiguous", "rfc5118")
    assert isinstance(amb, Request) and isinstance(amb.uri, SipURI)
    assert (amb.uri.host, amb.uri.port) == ("[2001:db8::10:5070]", None)
    una = parsed("port-unambiguous", "rfc5118")
    assert isinstance(una, Request) and isinstance(una.uri, SipURI)
    assert (una.uri.host, una.uri.port) == ("[2001:db8::10]", 5070)


@pytest.mark.parametrize("name", ["ipv6-bad", "ipv6-unterminated"])
def test_rfc5118_bad_references_are_refused(name: str) -> None:
    with pytest.raises(ParseError):
        parsed(name, "rfc5118")


def test_rfc5118_via_received_with_and_without_brackets() -> None:
    a = parsed("via-received-param-with-delim", "rfc5118").via[0]
    b = parsed("via-received-param-no-delim", "rfc5118").via[0]
    assert a.host == "[2001:db8::9:1]"
    assert a.received == "[2001:db8::9:255]" and b.received == "2001:db8::9:255"


def test_rfc5118_mixed_ip_versions_in_headers() -> None:
    m = parsed("mult-ip-in-header", "rfc5118")
    assert [(v.host, v.port) for v in m.via] == [("[2001:db8::9:1]", 6050), ("192.0.2.1", None)]
    assert [c.uri.host for c in m.contact] == ["[2001:db8::9:255]", "192.0.2.1"]  # type: ignore[attr-defined]


def test_rfc5118_ipv4_in_ipv6_both_forms() -> None:
    two = parsed("ipv6-bug-abnf-2-colons", "rfc5118")
    three = parsed("ipv6-bug-abnf-3-colons", "rfc5118")
    assert isinstance(two, Request) and isinstance(three, Request)
    assert two.uri.host == "[2001:db8::192.0.2.1]"  # type: ignore[attr-defined]
    assert three.uri.host == "[2001:db8:::192.0.2.1]"  # type: ignore[attr-defined]


def test_rfc5118_ipv6_in_sdp() -> None:
    m = parsed("ipv6-in-sdp", "rfc5118")
    assert b"c=IN IP6 2001:db8::20" in m.body


def test_tel_uri_parses() -> None:
    from sipha.sip import parse_uri

    u = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(u, TelURI) and u.digits == "+12015550123"
    assert u == parse_uri("tel:+1(201)5550123;phone-context=example.com")
