"""sipha.sip.uas: the §8.2 screen and §12.2.2 in-dialog checks every UAS role shares."""

from __future__ import annotations

import pytest

from sipha.sip import Request, parse
from sipha.sip.dialog import Dialog
from sipha.sip.uas import UasProfile, answer_in_dialog, in_dialog_refusal, screen

PROFILE = UasProfile(allow=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY"),
                     supported=("replaces",))  # fmt: skip


def request(
    method: str, *headers: str, body: str = "", uri: str = "sip:bob@example.com", cseq: int = 1,
    to_tag: str = "",
) -> Request:  # fmt: skip
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        "From: <sip:alice@example.com>;tag=a",
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: c1",
        f"CSeq: {cseq} {method}",
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


class Answered:
    """The request and what the dispatcher answered (a double for IncomingRequest)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.answers: list[int] = []

    def respond(
        self, status: int, reason: str | None = None, *, headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.answers.append(status)


class Usage:
    """A role's dialog: records what the dispatcher handed it."""

    def __init__(self, dialog: Dialog | None) -> None:
        self.dialog = dialog
        self.calls: list[str] = []

    def on_ack(self, request: Request) -> None:
        self.calls.append("ack")

    def on_bye(self, request: Request) -> None:
        self.calls.append("bye")

    def on_reoffer(self, incoming: Answered) -> None:
        self.calls.append("reoffer")
        incoming.respond(200)


def in_dialog(method: str, cseq: int) -> Request:
    return request(method, cseq=cseq, to_tag="b")


def test_requests_inside_a_dialog_are_answered_in_one_place() -> None:
    invite = request("INVITE", "Contact: <sip:alice@192.0.2.1>")
    usage = Usage(Dialog.from_uas(invite, "b", confirmed=True))
    seen = []
    for method, cseq in [("ACK", 1), ("INFO", 2), ("INVITE", 3), ("UPDATE", 4), ("BYE", 5)]:
        incoming = Answered(in_dialog(method, cseq))
        answer_in_dialog(incoming, usage)
        seen.append((method, incoming.answers))
    assert seen == [("ACK", []), ("INFO", [200]), ("INVITE", [200]), ("UPDATE", [200]),
                    ("BYE", [200])]  # fmt: skip
    assert usage.calls == ["ack", "reoffer", "reoffer", "bye"]
    # a CSeq that went backwards: 500, and the usage never sees it (§12.2.2)
    late = Answered(in_dialog("INFO", 2))
    answer_in_dialog(late, usage)
    assert late.answers == [500] and usage.calls[-1] == "bye"


def test_a_request_for_an_unknown_dialog_is_481_and_an_ack_for_one_is_dropped() -> None:
    bye, ack = Answered(in_dialog("BYE", 9)), Answered(in_dialog("ACK", 1))
    answer_in_dialog(bye, None)
    answer_in_dialog(ack, None)
    assert (bye.answers, ack.answers) == ([481], [])
