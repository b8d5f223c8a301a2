"""The sans-I/O core's ingress policy (sipha.sip.core): no socket, a fake clock.

What used to live in the asyncio adapter and could only be tested over sockets: the
source guard before parsing, Via stamping on the parsed value, 400/505 answers to where
the request came from, dropping what cannot be answered, bytes serialised once.
"""

from __future__ import annotations

from sipha.guard import Guard
from sipha.protection import Protection
from sipha.sip import Request, Response, parse
from sipha.sip.core import SipCore
from sipha.sip.transaction import RequestReceived, Target

SRC = Target("udp", "192.0.2.10", 5099)
OTHER = Target("udp", "192.0.2.20", 5099)


def options(branch: str = "z9hG4bKa1", via_host: str = "10.0.0.1", extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:edge@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via_host}:5070;branch={branch};rport\r\n"
        "From: <sip:a@x>;tag=1\r\nTo: <sip:edge@192.0.2.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
        f"Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def sent(core: SipCore) -> list[tuple[Response, Target]]:
    out = []
    for data, target in core.datagrams_to_send():
        msg = parse(data)
        assert isinstance(msg, Response)
        out.append((msg, target))
    return out


def test_via_is_stamped_on_the_parsed_value_and_not_parsed_again() -> None:
    core = SipCore()
    core.receive_datagram(options(), SRC, 0.0)
    (event,) = core.events()
    assert isinstance(event, RequestReceived)
    via = event.request.top_via
    assert (via.received, via.rport) == ("192.0.2.10", 5099)  # RFC 3261 §18.2.1, RFC 3581
    assert event.request.headers.get("via") == (
        "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa1;rport=5099;received=192.0.2.10"
    )
    assert event.request.top_via is via  # the stamped value is the parsed one, kept
    copy = event.request.headers.copy()
    assert copy._cache["via"] is event.request.headers._cache["via"]  # a copy shares it


def test_a_malformed_request_gets_400_with_the_reason_at_its_source() -> None:
    core = SipCore(user_agent="test")
    core.receive_datagram(options(extra="CSeq: 2 OPTIONS\r\n"), SRC, 0.0)
    ((resp, target),) = sent(core)
    assert (resp.status, resp.reason) == (400, "more than one CSeq header")
    assert target == SRC  # rport: back to the source address and port
    assert resp.to.tag and resp.headers.get("server") == "test"
    assert core.events() == [] and core.stats.bad_requests == 1


def test_unknown_version_gets_505_and_garbage_is_dropped_and_counted() -> None:
    core = SipCore()
    core.receive_datagram(options().replace(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia"), SRC, 0.0)
    ((resp, _),) = sent(core)
    assert resp.status == 505
    core.receive_datagram(b"\x16\x03\x01 not SIP at all", SRC, 1.0)
    # no From, To, Call-ID or CSeq: no answer could be matched to it, so none is sent
    core.receive_datagram(b"OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\n\r\n", SRC, 2.0)
    assert sent(core) == [] and core.stats.garbage == 2


def test_the_guard_runs_before_parsing() -> None:
    core = SipCore()
    core.guard = Guard(Protection(rate=1, burst=1, hard_limit=3), lambda host: 0)
    malformed = (
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKm\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: m\r\nCSeq: 1 OPTIONS\r\n"
        b"CSeq: 2 OPTIONS\r\n\r\n"
    )
    for i in range(100):  # a flood of malformed requests within one second
        core.receive_datagram(malformed, SRC, 10.0 + i * 0.001)
    answers = sent(core)
    assert [r.status for r, _ in answers] == [400]  # the first only: then it is limited
    assert core.guard.dropped == 97 and core.guard.limited == 2  # 97 never parsed
    assert core.stats.bad_requests == 1 and core.stats.garbage == 2
    # two seconds on the bucket has a token again: one well-formed request goes in, the
    # next is parsed only to answer 503 with Retry-After
    core.receive_datagram(options(branch="z9hG4bKx2"), SRC, 12.0)
    core.receive_datagram(options(branch="z9hG4bKx3"), SRC, 12.0005)
    ((busy, _),) = sent(core)
    assert (busy.status, busy.headers.get("retry-after")) == (503, "5")
    assert [e.request.top_via.branch for e in core.events()] == ["z9hG4bKx2"]  # type: ignore[union-attr]
    # another address was never touched
    core.receive_datagram(options(branch="z9hG4bKo"), OTHER, 10.05)
    assert [type(e) for e in core.events()] == [RequestReceived]


def test_a_retransmission_resends_the_bytes_sent_first() -> None:
    core = SipCore()
    core.receive_datagram(options(), SRC, 0.0)
    (event,) = core.events()
    assert isinstance(event, RequestReceived) and event.transaction is not None
    req = event.request
    assert isinstance(req, Request)
    from sipha.sip import make_response

    core.respond(event.transaction, make_response(req, 200, to_tag="t"), 0.1)
    ((first, _),) = core.datagrams_to_send()
    core.receive_datagram(options(), SRC, 0.5)  # the client's retransmission
    ((again, _),) = core.datagrams_to_send()
    assert again is first and core.events() == []  # the same bytes object, no new request
