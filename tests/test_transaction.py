"""Transaction state machines driven by a fake clock (RFC 3261 §17, RFC 6026)."""

from __future__ import annotations

import itertools

import pytest

from sipha.sip import Headers, Request, Response, make_response, parse
from sipha.sip.timers import LINGER_GRAIN, TimerConfig
from sipha.sip.transaction import (
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    ServerAbandoned,
    State,
    StrayResponse,
    Target,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)

UDP = Target("udp", "127.0.0.1", 5060)
TCP = Target("tcp", "127.0.0.1", 5060)
EXACT = TimerConfig(linger_grain=0)  # the RFC's timer values to the microsecond


def request(method: str = "INVITE", branch: str = "z9hG4bKabc", cseq: int = 1) -> Request:
    h = Headers.of(
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch}"),
        ("Max-Forwards", "70"),
        ("From", "<sip:a@example.com>;tag=ft"),
        ("To", "<sip:b@example.com>"),
        ("Call-ID", "cid-1"),
        ("CSeq", f"{cseq} {method}"),
    )
    return Request(method, "sip:b@example.com", h)


def wire(msg: Request | Response) -> Request | Response:
    """What the peer would see: serialise and parse again."""
    return parse(bytes(msg))


def response_to(req: Request, status: int, tag: str | None = "tt") -> Response:
    resp = wire(make_response(req, status, to_tag=tag))
    assert isinstance(resp, Response)
    return resp


def sends(events: list) -> list:  # type: ignore[type-arg]
    """What went on the wire (a retransmission's message object is gone: its bytes tell)."""
    return [e.message if e.message is not None else parse(e.data)
            for e in events if isinstance(e, SendMessage)]


def fire_until(layer: TransactionLayer, until: float) -> list[float]:
    """Fire timers up to ``until``; returns the times at which anything was sent."""
    times = []
    while (d := layer.next_deadline()) is not None and d <= until:
        layer.handle_timers(d)
        if sends(layer.drain()):
            times.append(round(d, 6))
    return times


def test_invite_client_retransmits_with_timer_a_then_times_out_at_b() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(request(), UDP, now=0.0)
    assert len(sends(layer.drain())) == 1
    times = fire_until(layer, 31.9)
    # Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (doubling, no T2 cap for INVITE)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    layer.handle_timers(32.0)
    events = layer.drain()
    assert any(isinstance(e, TransactionTimeout) and e.transaction is txn for e in events)
    assert txn.state is State.TERMINATED


def test_transaction_timeout_caps_timer_b_and_f() -> None:
    layer = TransactionLayer(TimerConfig.with_transaction_timeout_ms(4000))
    inv = layer.send_request(request(), UDP, 0.0)
    opt = layer.send_request(request("OPTIONS", "z9hG4bKopt"), UDP, 0.0)
    layer.drain()
    layer.handle_timers(3.999)
    assert not any(isinstance(e, TransactionTimeout) for e in layer.drain())
    layer.handle_timers(4.0)
    timed_out = [e.transaction for e in layer.drain() if isinstance(e, TransactionTimeout)]
    assert timed_out == [inv, opt] or timed_out == [opt, inv]


@pytest.mark.parametrize("ms", [0, 32001, 40000])
def test_transaction_timeout_range_is_checked(ms: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.32000"):
        TimerConfig.with_transaction_timeout_ms(ms)


def test_non_invite_timer_e_caps_at_t2_and_f_times_out() -> None:
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), UDP, 0.0)
    layer.drain()
    times = fire_until(layer, 31.99)
    # E: 0.5, 1.5, 3.5, 7.5 then every T2=4 s
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert all(b - a == pytest.approx(4.0) for a, b in itertools.pairwise(times[3:]))
    layer.handle_timers(32.0)
    assert any(isinstance(e, TransactionTimeout) for e in layer.drain())


def test_non_invite_after_provisional_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    req = request("REGISTER")
    layer.send_request(req, UDP, 0.0)
    layer.receive_response(response_to(req, 100), UDP, 0.1)
    layer.drain()
    times = fire_until(layer, 9.0)
    assert times == [0.5, 4.5, 8.5]


def test_reliable_transport_has_no_retransmissions() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), TCP, 0.0)
    layer.drain()
    assert fire_until(layer, 31.9) == []


def test_invite_client_non_2xx_generates_ack_and_absorbs_retransmission() -> None:
    layer = TransactionLayer(EXACT)
    req = request()
    txn = layer.send_request(req, UDP, 0.0)
    layer.drain()
    resp = response_to(req, 486)
    layer.receive_response(resp, UDP, 0.2)
    events = layer.drain()
    (ack,) = sends(events)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via.branch == "z9hG4bKabc"  # same branch as the INVITE (§17.1.1.3)
    assert ack.to.tag == "tt" and ack.cseq.number == 1 and ack.cseq.method == "ACK"
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [486]
    assert txn.state is State.COMPLETED
    # a retransmitted 486 is ACKed again, not delivered again
    layer.receive_response(resp, UDP, 0.7)
    events = layer.drain()
    assert [m.method for m in sends(events)] == ["ACK"]
    assert not any(isinstance(e, ResponseReceived) for e in events)
    # Timer D: 32 s over UDP
    layer.handle_timers(32.19)
    assert txn.state is State.COMPLETED
    layer.handle_timers(32.2)
    assert txn.state is State.TERMINATED


def test_invite_client_2xx_goes_to_accepted_and_forwards_retransmissions() -> None:
    layer = TransactionLayer(EXACT)
    req = request()
    txn = layer.send_request(req, UDP, 0.0)
    layer.drain()
    layer.receive_response(response_to(req, 180), UDP, 0.1)
    ok = response_to(req, 200)
    layer.receive_response(ok, UDP, 0.2)
    layer.receive_response(ok, UDP, 0.7)
    events = layer.drain()
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [180, 200, 200]
    assert not sends(events)  # the ACK for a 2xx is the TU's, not the transaction's
    assert txn.state is State.ACCEPTED
    layer.handle_timers(0.2 + 32.0)
    assert txn.state is State.TERMINATED
    layer.drain()
    layer.receive_response(ok, UDP, 40.0)
    assert isinstance(layer.drain()[0], StrayResponse)


def test_provisional_stops_timer_a_and_b() -> None:
    layer = TransactionLayer()
    req = request()
    txn = layer.send_request(req, UDP, 0.0)
    layer.receive_response(response_to(req, 100, None), UDP, 0.1)
    layer.drain()
    assert fire_until(layer, 100.0) == []
    assert txn.state is State.PROCEEDING


def test_server_invite_sends_100_absorbs_retransmission_and_retransmits_final() -> None:
    layer = TransactionLayer(EXACT)
    req = wire(request())
    assert isinstance(req, Request)
    layer.receive_request(req, UDP, 0.0)
    events = layer.drain()
    assert [m.status for m in sends(events)] == [100]
    (new,) = [e for e in events if isinstance(e, RequestReceived)]
    txn = new.transaction
    assert txn is not None
    layer.receive_request(req, UDP, 0.3)  # retransmission: last provisional again
    assert [m.status for m in sends(layer.drain())] == [100]
    layer.respond(txn, make_response(req, 503, to_tag="x"), 1.0)
    assert [m.status for m in sends(layer.drain())] == [503]
    # Timer G: 1.5, 2.5, 4.5, 8.5, then every T2
    assert fire_until(layer, 13.0) == [1.5, 2.5, 4.5, 8.5, 12.5]
    ack = wire(request("ACK"))  # ACK for a non-2xx carries the INVITE's branch
    assert isinstance(ack, Request)
    layer.receive_request(ack, UDP, 13.1)
    events = layer.drain()
    assert not any(isinstance(e, RequestReceived) for e in events)  # absorbed
    assert txn.state is State.CONFIRMED
    assert fire_until(layer, 17.0) == []
    layer.handle_timers(13.1 + 5.0)  # Timer I = T4
    assert txn.state is State.TERMINATED


def test_server_invite_timer_h_without_ack() -> None:
    layer = TransactionLayer()
    req = wire(request())
    assert isinstance(req, Request)
    layer.receive_request(req, UDP, 0.0)
    txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
    assert txn is not None
    layer.respond(txn, make_response(req, 486, to_tag="x"), 0.0)
    fire_until(layer, 31.9)
    layer.handle_timers(32.0)
    events = layer.drain()
    assert any(isinstance(e, TransactionTimeout) for e in events)
    assert txn.state is State.TERMINATED


def test_server_invite_2xx_retransmitted_until_ack_rfc6026() -> None:
    layer = TransactionLayer()
    req = wire(request())
    assert isinstance(req, Request)
    layer.receive_request(req, UDP, 0.0)
    txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
    assert txn is not None
    layer.respond(txn, make_response(req, 200, to_tag="x"), 0.0)
    layer.drain()
    assert fire_until(layer, 4.0) == [0.5, 1.5, 3.5]
    # INVITE retransmission in Accepted is absorbed, no response resent (RFC 6026 §8.7)
    layer.receive_request(req, UDP, 4.1)
    assert sends(layer.drain()) == []
    ack = request("ACK", branch="z9hG4bKother")  # 2xx ACK is its own transaction
    ack.headers.set("To", "<sip:b@example.com>;tag=x")
    layer.receive_request(wire(ack), UDP, 4.2)  # type: ignore[arg-type]
    events = layer.drain()
    assert [type(e) for e in events] == [RequestReceived]
    assert fire_until(layer, 30.0) == []  # no more 2xx retransmissions
    layer.handle_timers(32.0)
    assert not any(isinstance(e, TransactionTimeout) for e in layer.drain())
    assert txn.state is State.TERMINATED


def test_server_non_invite_completed_resends_final_then_j() -> None:
    layer = TransactionLayer(EXACT)
    req = wire(request("OPTIONS"))
    assert isinstance(req, Request)
    layer.receive_request(req, UDP, 0.0)
    events = layer.drain()
    assert sends(events) == []  # no automatic 100 for non-INVITE
    txn = next(e.transaction for e in events if isinstance(e, RequestReceived))
    assert txn is not None
    layer.receive_request(req, UDP, 0.1)  # retransmission before any response: absorbed
    assert layer.drain() == []
    layer.respond(txn, make_response(req, 200, to_tag="x"), 0.2)
    layer.drain()
    layer.receive_request(req, UDP, 0.4)
    assert [m.status for m in sends(layer.drain())] == [200]
    layer.handle_timers(0.2 + 32.0)
    assert txn.state is State.TERMINATED


def test_wait_state_timers_expire_together_on_the_grain() -> None:
    """Timers J (and D, I, K, L, M) only end a lingering transaction: answered at three
    moments within one grain, three OPTIONS transactions end in one timer wake-up, at the
    grain's next step, never before their RFC deadline; retransmission timers and the
    reliable transports' zero-length waits stay exact."""
    layer = TransactionLayer()
    txns = []
    for i, at in enumerate((0.01, 0.02, 0.05)):
        req = wire(request("OPTIONS", f"z9hG4bKg{i}"))
        assert isinstance(req, Request)
        layer.receive_request(req, UDP, at)
        txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
        assert txn is not None
        layer.respond(txn, make_response(req, 200, to_tag="x"), at)
        txns.append(txn)
    layer.drain()
    step = LINGER_GRAIN * (int((0.05 + 32.0) / LINGER_GRAIN) + 1)  # next step after the last
    assert {t.timers["J"] for t in txns} == {step}
    assert 32.05 <= step < 32.01 + LINGER_GRAIN
    assert layer.next_deadline() == step
    layer.handle_timers(step - 1e-6)
    assert [t.state for t in txns] == [State.COMPLETED] * 3
    layer.handle_timers(step)
    assert [t.state for t in txns] == [State.TERMINATED] * 3
    client = layer.send_request(request("BYE", "z9hG4bKe"), UDP, 0.003)
    assert client.timers["E"] == 0.003 + 0.5  # a retransmission: on time
    tcp = TransactionLayer()
    req = wire(request("OPTIONS", "z9hG4bKt"))
    assert isinstance(req, Request)
    tcp.receive_request(req, TCP, 0.01)
    txn = next(e.transaction for e in tcp.drain() if isinstance(e, RequestReceived))
    assert txn is not None
    tcp.respond(txn, make_response(req, 200, to_tag="x"), 0.01)
    assert txn.timers["J"] == 0.01  # reliable: Timer J is zero, not a grain


def test_server_matching_uses_branch_sent_by_and_method() -> None:
    layer = TransactionLayer()
    a = wire(request("OPTIONS", "z9hG4bKsame"))
    b = wire(request("OPTIONS", "z9hG4bKsame"))
    b.headers.set("Via", "SIP/2.0/UDP 127.0.0.9:5070;branch=z9hG4bKsame")  # other sent-by
    layer.receive_request(a, UDP, 0.0)  # type: ignore[arg-type]
    layer.receive_request(b, UDP, 0.0)  # type: ignore[arg-type]
    assert sum(isinstance(e, RequestReceived) for e in layer.drain()) == 2


def test_cancel_matches_pending_invite() -> None:
    layer = TransactionLayer()
    inv = wire(request())
    assert isinstance(inv, Request)
    layer.receive_request(inv, UDP, 0.0)
    txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
    cancel = wire(request("CANCEL"))
    assert isinstance(cancel, Request)
    layer.receive_request(cancel, UDP, 0.5)
    events = layer.drain()
    assert [m.status for m in sends(events)] == [200]
    (c,) = [e for e in events if isinstance(e, CancelReceived)]
    assert c.transaction is txn and txn.cancelled


def test_transport_failure_fails_the_client_transaction_at_once() -> None:
    layer = TransactionLayer()
    txn = layer.send_request(request(), TCP, 0.0)
    layer.drain()
    assert layer.transport_failed(TCP, "connection reset") == 1
    events = layer.drain()
    assert [type(e) for e in events] == [TransportError, TransactionTerminated]
    assert txn.state is State.TERMINATED
    assert layer.next_deadline() is None


def test_stray_response_is_reported() -> None:
    layer = TransactionLayer()
    layer.receive_response(response_to(request(), 200), UDP, 0.0)
    assert isinstance(layer.drain()[0], StrayResponse)


def test_response_target_rfc3261_18_2_2_and_rfc3581() -> None:
    from sipha.sip.transaction import response_target

    src = Target("udp", "192.0.2.7", 40000)
    plain = request("OPTIONS")  # Via: 127.0.0.1:5070, no rport
    assert response_target(plain, src) == Target("udp", "192.0.2.7", 5070)
    plain.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr;rport")
    assert response_target(plain, src) == Target("udp", "192.0.2.7", 40000)
    plain.headers.set("Via", "SIP/2.0/UDP host.example;branch=z9hG4bKr")
    assert response_target(plain, src) == Target("udp", "192.0.2.7", 5060)
    tcp = Target("tcp", "192.0.2.7", 40001)
    assert response_target(plain, tcp) == tcp  # the connection the request came on


def test_watchdog_answers_500_when_the_tu_never_answers() -> None:
    # every request ends with a final answer, even when the TU forgot (a bug, a task that
    # died): INVITE after Timer C + 64*T1 since its last provisional, others 64*T1 + T4
    layer = TransactionLayer(TimerConfig(timer_c=10.0))
    inv = wire(request())
    opt = wire(request("OPTIONS", branch="z9hG4bKopt"))
    assert isinstance(inv, Request) and isinstance(opt, Request)
    layer.receive_request(inv, UDP, 0.0)
    layer.receive_request(opt, UDP, 0.0)
    txns = [e.transaction for e in layer.drain() if isinstance(e, RequestReceived)]
    invite_txn, options_txn = txns
    assert invite_txn is not None and options_txn is not None
    layer.respond(invite_txn, make_response(inv, 180, to_tag="x"), 5.0)  # re-arms it
    layer.drain()
    layer.handle_timers(36.9)  # 64*T1 + T4 = 37 s for the OPTIONS: not yet
    assert not layer.drain()
    layer.handle_timers(37.0)
    events = layer.drain()
    assert [e.transaction for e in events if isinstance(e, ServerAbandoned)] == [options_txn]
    (answer,) = sends(events)
    assert answer.status == 500 and answer.to.tag  # a final answer with a To tag
    layer.handle_timers(5.0 + 10.0 + 32.0 - 0.1)
    assert not any(isinstance(e, ServerAbandoned) for e in layer.drain())
    layer.handle_timers(5.0 + 10.0 + 32.0)
    events = layer.drain()
    assert [e.transaction for e in events if isinstance(e, ServerAbandoned)] == [invite_txn]
    assert [m.status for m in sends(events)] == [500]
    fire_until(layer, 200.0)
    assert layer.size() == 0  # and both are gone in the end


def test_stateless_answers_keep_no_transaction_and_tags_are_shared() -> None:
    layer = TransactionLayer()
    reg = wire(request("REGISTER", branch="z9hG4bKreg"))
    assert isinstance(reg, Request)
    layer.receive_request(reg, UDP, 0.0)
    txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
    assert txn is not None and layer.server_count_from("127.0.0.1") == 1
    layer.respond_statelessly(txn, make_response(reg, 401, to_tag=txn.tag), 0.0)
    assert layer.size() == 0 and layer.server_count_from("127.0.0.1") == 0
    layer.receive_request(reg, UDP, 0.1)  # its retransmission is a new request: answered again
    assert any(isinstance(e, RequestReceived) for e in layer.drain())
    # §9.2: the 200 for a CANCEL carries the tag of the INVITE's own answers
    inv = wire(request())
    assert isinstance(inv, Request)
    layer.receive_request(inv, UDP, 0.0)
    invite_txn = next(e.transaction for e in layer.drain() if isinstance(e, RequestReceived))
    assert invite_txn is not None
    cancel = wire(request("CANCEL"))
    assert isinstance(cancel, Request)
    layer.receive_request(cancel, UDP, 0.2)
    (ok,) = sends(layer.drain())
    assert ok.status == 200 and ok.to.tag == invite_txn.tag is not None
