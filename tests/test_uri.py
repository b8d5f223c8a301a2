"""URIs: parsing, escaping, serialisation and RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import pytest

from sipha.sip import ParseError, SipURI, parse_uri, sip_uri

EQUIVALENT = [
    # RFC 3261 §19.1.4 examples
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    # RFC 5954 §3: IPv6 references compare as addresses
    ("sip:bob@[2001:db8::9:1]", "sip:bob@[2001:db8:0:0:0:0:9:1]"),
]  # fmt: skip

DIFFERENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:alice@atlanta.com;maddr=10.0.0.1", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_uris(a: str, b: str) -> None:
    assert parse_uri(a) == parse_uri(b)
    assert hash(parse_uri(a)) == hash(parse_uri(b))


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_uris(a: str, b: str) -> None:
    assert parse_uri(a) != parse_uri(b)


def test_fields_and_round_trip() -> None:
    text = "sips:alice:pw@[2001:db8::1]:5061;transport=tls;lr;maddr=192.0.2.1?Subject=hi"
    u = parse_uri(text)
    assert isinstance(u, SipURI)
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips",
        "alice",
        "pw",
        "[2001:db8::1]",
        5061,
    )
    assert u.transport == "tls" and u.lr and u.maddr == "192.0.2.1" and u.secure
    assert u.headers == {"Subject": "hi"}
    assert str(u) == text
    changed = u.replace(port=5062)
    assert str(changed) == text.replace(":5061", ":5062")


def test_escaping_on_build() -> None:
    u = sip_uri("example.com", user="I have spaces@home", port=5070, lr=None)
    assert str(u) == "sip:I%20have%20spaces%40home@example.com:5070;lr"
    back = parse_uri(str(u))
    assert isinstance(back, SipURI) and back.user == "I have spaces@home"
    assert sip_uri("::1").host == "[::1]"


@pytest.mark.parametrize(
    "bad",
    [
        "sip:",
        "sip:user@",
        "sip:user@host:99999",
        "sip:user@host:port",
        "sip:a@b@c",
        "sip:user@ho st",
        "sip:user@[::1",
        "sip:user@[zz::1]",
        "sip:user@300.1.1.1",
        "sip:us%zzer@host",
        "sip:host;=x",
        "sip:host?a",
        "noscheme",
        "tel:",
        "tel:abc;x",
    ],
)
def test_bad_uris_raise_parse_error(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(bad)


def test_aor_ignores_port_and_params() -> None:
    u = parse_uri("sip:Alice@Example.COM:5070;transport=tcp")
    assert isinstance(u, SipURI) and u.aor == "sip:Alice@example.com"
