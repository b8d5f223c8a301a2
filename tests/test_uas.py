"""sipha.sip.uas: the §8.2 screen and §12.2.2 in-dialog checks every UAS role shares."""

from __future__ import annotations

import pytest

from sipha.sip import Request, parse
from sipha.sip.uas import UasProfile, in_dialog_refusal, screen

PROFILE = UasProfile(allow=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY"),
                     supported=("replaces",))  # fmt: skip


def request(method: str, *headers: str, body: str = "", uri: str = "sip:bob@example.com") -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        "From: <sip:alice@example.com>;tag=a",
        "To: <sip:bob@example.com>",
        "Call-ID: c1",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    msg = parse(("\r\n".join(lines) + "\r\n\r\n" + body).encode())
    assert isinstance(msg, Request)
    return msg


def test_an_unimplemented_method_gets_405_with_allow() -> None:
    assert screen(request("SUBSCRIBE"), PROFILE) == (
        405, None, [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY")])  # fmt: skip


def test_an_unknown_scheme_gets_416() -> None:
    assert screen(request("INVITE", uri="im:bob@example.com"), PROFILE) == (416, None, [])


def test_an_unsupported_requirement_gets_420_naming_it_but_never_for_ack_or_cancel() -> None:
    req = request("INVITE", "Require: replaces, 100rel, timer")
    assert screen(req, PROFILE) == (420, None, [("Unsupported", "100rel, timer")])
    assert screen(request("INVITE", "Require: replaces"), PROFILE) is None
    assert screen(request("ACK", "Require: 100rel"), PROFILE) is None
    assert screen(request("CANCEL", "Require: 100rel"), PROFILE) is None


@pytest.mark.parametrize("method", ["INVITE", "ACK"])
def test_a_session_description_it_cannot_read_gets_415_with_accept(method: str) -> None:
    req = request(method, "Content-Type: text/plain", body="hello")
    assert screen(req, PROFILE) == (415, None, [("Accept", "application/sdp")])
    gz = request(method, "Content-Type: application/sdp", "Content-Encoding: gzip", body="x")
    assert screen(gz, PROFILE) == (415, None, [("Accept-Encoding", "identity")])


def test_the_body_of_a_notify_is_the_applications_to_judge() -> None:
    # a presence NOTIFY carries the event package's body, not a session description
    assert screen(request("NOTIFY", "Content-Type: text/plain", body="open"), PROFILE) is None


def test_no_dialog_is_481() -> None:
    assert in_dialog_refusal(request("BYE"), None) == (481, None, [])


def test_capabilities_advertise_only_what_the_profile_holds() -> None:
    assert dict(UasProfile(allow=("INVITE", "ACK")).capabilities()) == {
        "Allow": "INVITE, ACK", "Accept": "application/sdp", "Accept-Encoding": "identity"}  # fmt: skip
