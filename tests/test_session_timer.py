"""RFC 4028 session timers, sans-I/O: the negotiation each side makes and the clock that
says when to refresh and when to give up."""

from __future__ import annotations

from sipha.sip import Request, Response, parse
from sipha.sip.session_timer import (
    Negotiated,
    SessionClock,
    TimerPolicy,
    min_se_of_422,
    uac_headers,
    uac_result,
    uas_negotiate,
)

POLICY = TimerPolicy(expires=1800, min_se=90, refresher="auto")


def invite(*headers: str) -> Request:
    lines = ["INVITE sip:ivr@example.com SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
             "From: <sip:a@example.com>;tag=a", "To: <sip:ivr@example.com>", "Call-ID: c",
             "CSeq: 1 INVITE", "Contact: <sip:a@192.0.2.1>", "Max-Forwards: 70", *headers,
             "Content-Length: 0"]  # fmt: skip
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def response(status: int, *headers: str) -> Response:
    lines = [f"SIP/2.0 {status} X", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
             "From: <sip:a@example.com>;tag=a", "To: <sip:ivr@example.com>;tag=b", "Call-ID: c",
             "CSeq: 1 INVITE", *headers, "Content-Length: 0"]  # fmt: skip
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Response)
    return msg


def test_a_uac_that_supports_timers_is_refused_422_below_our_min_se() -> None:
    assert uas_negotiate(invite("Supported: timer", "Session-Expires: 60"), POLICY) == 90
    # one that does not support them cannot retry: its interval is raised instead
    assert uas_negotiate(invite("Session-Expires: 60"), POLICY) == Negotiated(90, "uas")


def test_the_uas_lowers_but_never_raises_the_interval_and_keeps_the_uacs_refresher() -> None:
    got = uas_negotiate(invite("Supported: timer", "Session-Expires: 7200;refresher=uas"), POLICY)
    assert got == Negotiated(1800, "uas", require=True)
    got = uas_negotiate(invite("k: timer", "x: 300"), POLICY)  # compact forms
    assert got == Negotiated(300, "uac", require=True)  # auto: the UAC refreshes
    assert got is not None and not isinstance(got, int)
    assert got.response_headers() == [("Session-Expires", "300;refresher=uac"),
                                      ("Require", "timer")]  # fmt: skip


def test_without_session_expires_the_uas_adds_its_own_and_refreshes_if_the_uac_cannot() -> None:
    assert uas_negotiate(invite(), POLICY) == Negotiated(1800, "uas")
    assert uas_negotiate(invite("Supported: timer"), POLICY) == Negotiated(1800, "uac", True)
    ours = TimerPolicy(refresher="uas")
    assert uas_negotiate(invite("Supported: timer"), ours) == Negotiated(1800, "uas", True)
    assert uas_negotiate(invite("Session-Expires: 300"), TimerPolicy(enabled=False)) is None


def test_a_min_se_in_the_request_raises_our_floor() -> None:
    got = uas_negotiate(invite("Supported: timer", "Session-Expires: 200", "Min-SE: 250"), POLICY)
    assert got == 250


def test_the_uac_asks_retries_on_422_and_follows_the_2xx() -> None:
    assert uac_headers(POLICY) == [("Supported", "timer"), ("Session-Expires", "1800"),
                                   ("Min-SE", "90")]  # fmt: skip
    assert min_se_of_422(response(422, "Min-SE: 3600")) == 3600
    assert dict(uac_headers(POLICY, 3600))["Session-Expires"] == "3600"
    assert min_se_of_422(response(422)) is None
    assert uac_result(response(200, "Session-Expires: 600;refresher=uas"), POLICY) == Negotiated(
        600, "uas")  # fmt: skip
    # no Session-Expires in the 2xx: the UAS does not do timers; the UAC refreshes alone
    assert uac_result(response(200), POLICY) == Negotiated(1800, "uac")
    assert uac_headers(TimerPolicy(enabled=False)) == []


def test_the_refresher_refreshes_at_half_and_the_other_side_gives_up_before_expiry() -> None:
    clock = SessionClock(Negotiated(90, "uac"), we_were="uac", now=100.0)
    assert clock.we_refresh and clock.due(144.9) is None and clock.due(145.0) == "refresh"
    clock.update(Negotiated(90, "uac"), "uac", 145.0)  # refreshed
    assert clock.next_deadline() == 190.0
    # the other side: BYE at interval - min(32, interval/3) = 60 s after the last refresh
    other = SessionClock(Negotiated(90, "uac"), we_were="uas", now=100.0)
    assert not other.we_refresh and other.due(159.9) is None and other.due(160.0) == "expire"
    long = SessionClock(Negotiated(1800, "uas"), we_were="uac", now=0.0)
    assert long.expires_at() == 1800 - 32
    # a refresh the peer refused (491, 500...): no more tries, it expires in time
    clock.refresh_failed()
    assert clock.due(190.0) is None and clock.due(205.0) == "expire"


def test_the_refresher_is_named_relative_to_the_last_refresh_transaction() -> None:
    # the callee re-INVITEs with refresher=uac: the callee (UAC of that one) refreshes now
    clock = SessionClock(Negotiated(120, "uac"), we_were="uac", now=0.0)
    clock.update(Negotiated(120, "uac"), we_were="uas", now=10.0)
    assert not clock.we_refresh and clock.expires_at() == 10 + 120 - 32


def test_a_refresh_asks_for_the_running_interval_and_keeps_us_the_refresher() -> None:
    clock = SessionClock(Negotiated(120, "uas"), we_were="uas", now=0.0)
    assert uac_headers(POLICY, clock=clock) == [
        ("Supported", "timer"), ("Session-Expires", "120;refresher=uac"), ("Min-SE", "90")]  # fmt: skip
