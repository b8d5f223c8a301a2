"""The Record-Route signature and flow tokens: what makes the edge refuse to relay."""

from __future__ import annotations

import base64

from sipha.edge.route_signature import RouteSigner
from sipha.sip.transaction import Target

KEY = b"0123456789abcdef0123456789abcdef"
FLOW = Target("udp", "192.0.2.7", 5060)


def test_a_signature_holds_for_its_call_and_either_tag_only() -> None:
    signer = RouteSigner(KEY)
    sg = signer.sign("call-1@host", "from-tag")
    assert len(sg) == 16  # 96 bits, base64url: a short URI parameter
    assert signer.verify(sg, "call-1@host", ("from-tag", "to-tag"))
    assert signer.verify(sg, "call-1@host", ("to-tag", "from-tag"))  # callee's requests
    assert not signer.verify(sg, "call-2@host", ("from-tag", "to-tag"))
    assert not signer.verify(sg, "call-1@host", ("other", "to-tag"))
    assert not signer.verify("", "call-1@host", ("from-tag", "to-tag"))
    assert not signer.verify(sg[:-1] + ("A" if sg[-1] != "A" else "B"), "call-1@host",
                             ("from-tag", "to-tag"))  # fmt: skip


def test_nodes_with_the_same_secret_agree_and_others_do_not() -> None:
    sg = RouteSigner(KEY).sign("c", "t")
    assert RouteSigner(KEY).verify(sg, "c", ("t", ""))
    assert not RouteSigner(KEY[::-1]).verify(sg, "c", ("t", ""))
    assert not RouteSigner().verify(sg, "c", ("t", ""))  # a random key of its own
    long_key = KEY * 4  # a secret file longer than BLAKE2s's 32-byte key
    assert RouteSigner(long_key).verify(RouteSigner(long_key).sign("c", "t"), "c", ("t", ""))
    assert not RouteSigner(long_key).verify(sg, "c", ("t", ""))


def test_a_flow_token_names_its_flow_and_cannot_be_altered() -> None:
    signer = RouteSigner(KEY)
    token = signer.flow_token(FLOW)
    assert signer.flow_of(token) == FLOW
    payload, _, mac = token.partition(".")
    other = base64.urlsafe_b64encode(b"udp:198.51.100.1:5060").rstrip(b"=").decode()
    assert signer.flow_of(f"{other}.{mac}") is None  # another address, the same MAC
    assert RouteSigner(KEY[::-1]).flow_of(token) is None
    assert signer.flow_of(payload) is None and signer.flow_of(None) is None


def test_a_route_signature_never_passes_for_a_flow_token() -> None:
    """A caller chooses its Call-ID and From tag: with ``flow`` and ``udp:host:port`` it
    would make the edge MAC the very bytes of a flow token's input. Each use has its own
    personalisation, so the Record-Route signature it gets back is no flow token."""
    signer = RouteSigner(KEY)
    sg = signer.sign("flow", "udp:192.0.2.7:5060")
    payload = base64.urlsafe_b64encode(b"udp:192.0.2.7:5060").rstrip(b"=").decode()
    assert signer.flow_of(f"{payload}.{sg}") is None
    assert signer.flow_of(f"{payload}.{sg}=") is None
    assert signer.derive(b"nonce") != signer.derive(b"other")
    assert len(signer.derive(b"nonce")) == 32
