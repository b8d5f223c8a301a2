"""The edge's per-source guard: 503 over the bucket, drop over the hard limit, one log line."""

from __future__ import annotations

import logging

import pytest

from sipha.edge.config import Protection
from sipha.edge.protection import Guard
from sipha.sip import Headers, Request
from sipha.sip.transaction import Target


def options(ua: str = "test") -> Request:
    h = Headers.of(
        ("From", "<sip:a@x>;tag=1"),
        ("To", "<sip:b@x>"),
        ("Call-ID", "c"),
        ("CSeq", "1 OPTIONS"),
        ("User-Agent", ua),
    )
    return Request("OPTIONS", "sip:b@x", h)


def test_bucket_then_503_then_drop_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(Protection(rate=1, burst=10, hard_limit=50, retry_after=7), lambda: 0)
    src = Target("udp", "192.0.2.1", 5060)
    other = Target("udp", "192.0.2.2", 5060)
    with caplog.at_level(logging.WARNING, logger="sipha.edge.protection"):
        verdicts = [guard(options(), src) for _ in range(200)]
    assert verdicts[:10] == [None] * 10  # the burst passes
    assert verdicts[10] == (503, [("Retry-After", "7")])
    assert verdicts[-1] == (0, [])  # above 50/s: dropped silently
    assert guard.limited == 40 and guard.dropped == 150
    assert guard.over_hard_limit(src) and not guard.over_hard_limit(other)
    assert guard(options(), other) is None  # another address is untouched
    assert len(caplog.records) == 1 and "192.0.2.1" in caplog.records[0].getMessage()


def test_scanners_and_transaction_limit() -> None:
    busy = Guard(Protection(max_transactions=10), lambda: 10)
    assert busy(options(), Target("udp", "192.0.2.3", 5060)) == (503, [("Retry-After", "5")])
    assert busy(options("friendly-scanner"), Target("udp", "192.0.2.4", 5060)) == (0, [])
    assert busy.scanners == 1 and busy.overload == 1
