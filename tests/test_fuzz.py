"""Fuzz the parser: random bytes and mutated valid messages may only raise ParseError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipha.sip import ParseError, parse
from sipha.sip.framing import StreamFramer
from tests.vectors.load import load, names

SEEDS = [load("rfc4475", n) for n in names("rfc4475")] + [
    load("rfc5118", n) for n in names("rfc5118")
]
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exercise(data: bytes) -> None:
    try:
        msg = parse(data)
        msg.validate()
        _ = bytes(msg)
        for v in msg.via:
            _ = (v.branch, v.rport, v.sent_by)
        for c in msg.contact:
            _ = (c.expires, c.q, c.tag)
        _ = msg.max_forwards, msg.expires, msg.record_route
    except ParseError:
        pass


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    exercise(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(
                st.sampled_from(
                    [b":", b";", b",", b"<", b">", b'"', b"\r\n", b" ", b"%", b"[", b"=", b"@"]
                )
            )
        elif op == 2 and data:
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            end = pos + draw(st.integers(1, 40))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_valid_messages(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(mutated(), st.lists(st.integers(1, 64), max_size=20))
def test_framer_on_mutated_streams(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer()
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for frame in framer.feed(data[pos : pos + cut]):
                if isinstance(frame, bytes):
                    exercise(frame)
            pos += cut
    except ParseError:
        pass
