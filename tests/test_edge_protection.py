"""The per-source guard (sipha.protection), sans-I/O with a fake clock.

Before parsing: token bucket (admit / parse-only-for-503 / drop unread). After parsing:
scanner User-Agents, behaviour-based scanner detection, the transaction table's size and
each source's share of it; trusted peers skip all of it.
"""

from __future__ import annotations

import logging

import pytest

from sipha.guard import Guard
from sipha.protection import Protection
from sipha.sip import Headers, Request
from sipha.sip.core import Admission
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


SRC = Target("udp", "192.0.2.1", 5060)
OTHER = Target("udp", "192.0.2.2", 5060)


def test_bucket_then_limit_then_drop_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(Protection(rate=1, burst=10, hard_limit=50, retry_after=7), lambda h: 0)
    with caplog.at_level(logging.WARNING, logger="sipha.protection"):
        verdicts = [guard.admit(SRC, 100.0 + i * 0.001) for i in range(200)]
    assert verdicts[:10] == [Admission.ADMIT] * 10  # the burst passes
    assert verdicts[10:50] == [Admission.LIMIT] * 40  # parsed only to answer 503
    assert verdicts[-1] is Admission.DROP  # above 50/s: not even parsed
    assert guard.limited == 40 and guard.dropped == 150
    assert guard.busy() == (503, [("Retry-After", "7")])
    assert guard.admit(OTHER, 100.2) is Admission.ADMIT  # another address is untouched
    assert len(caplog.records) == 1 and "192.0.2.1" in caplog.records[0].getMessage()
    # a second later the bucket has one token again, and the hard-limit window restarted
    assert guard.admit(SRC, 101.3) is Admission.ADMIT


def test_scanner_user_agent_and_transaction_limits() -> None:
    counts = {None: 10}
    busy = Guard(Protection(max_transactions=10), lambda h: counts.get(h, 0))
    assert busy.check(options(), Target("udp", "192.0.2.3", 5060), 0.0) == busy.busy()
    assert busy.check(options("friendly-scanner"), Target("udp", "192.0.2.4", 5060), 0.0) == (0, [])
    assert busy.scanners == 1 and busy.overload == 1
    # each source's share of the table: the source holding its share gets 503, others pass
    counts = {None: 50, "192.0.2.5": 20}
    share = Guard(Protection(max_transactions=100, max_transactions_per_source=20),
                  lambda h: counts.get(h, 0))  # fmt: skip
    assert share.check(options(), Target("udp", "192.0.2.5", 5060), 0.0) == share.busy()
    assert share.check(options(), Target("udp", "192.0.2.6", 5060), 0.0) is None


def test_behaviour_scanner_is_blocked_and_an_authenticated_source_is_not() -> None:
    guard = Guard(Protection(scanner_threshold=5, scanner_window=60, scanner_block=100),
                  lambda h: 0)  # fmt: skip
    for i in range(4):
        guard.refused(SRC, "INVITE", f"10{i}", 10.0 + i)
        guard.refused(SRC, "INVITE", f"10{i}", 10.5 + i)  # the same refusal twice: one
    assert guard.check(options(), SRC, 14.0) is None and guard.scanners_detected == 0
    guard.refused(SRC, "OPTIONS", "100", 14.0)  # a fifth distinct (method, user)
    assert guard.scanners_detected == 1
    assert guard.check(options(), SRC, 15.0) == (0, [])  # dropped after parsing...
    assert guard.admit(SRC, 15.0) is Admission.DROP  # ...and before it
    assert guard.admit(SRC, 115.0) is Admission.ADMIT  # scanner_block is over
    # refusals spread wider than the window never add up
    slow = Target("udp", "192.0.2.7", 5060)
    for i in range(10):
        guard.refused(slow, "INVITE", f"20{i}", 1000.0 + i * 20)
    assert guard.scanners_detected == 1
    # a phone that authenticated may get many refusals (calls to wrong numbers)
    phone = Target("udp", "192.0.2.8", 5060)
    guard.authenticated(phone, 2000.0)
    for i in range(10):
        guard.refused(phone, "INVITE", f"30{i}", 2001.0 + i)
    assert guard.scanners_detected == 1 and guard.check(options(), phone, 2012.0) is None


def test_trusted_peers_skip_every_limit() -> None:
    guard = Guard(
        Protection(rate=1, burst=1, hard_limit=2, max_transactions_per_source=1,
                   scanner_threshold=2, trusted_peers=["192.0.2.0/28"]),
        lambda h: 5,
    )  # fmt: skip
    sbc = Target("udp", "192.0.2.9", 5060)
    assert all(guard.admit(sbc, 0.0) is Admission.ADMIT for _ in range(100))
    for i in range(5):
        guard.refused(sbc, "INVITE", str(i), 1.0)
    assert guard.check(options("friendly-scanner"), sbc, 2.0) is None
    outsider = Target("udp", "192.0.2.99", 5060)
    assert [guard.admit(outsider, 0.0) for _ in range(4)] == [
        Admission.ADMIT, Admission.LIMIT, Admission.DROP, Admission.DROP,
    ]  # fmt: skip (the third request in a second is over hard_limit = 2)


def test_trusted_peers_must_be_addresses_or_networks() -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        Protection(trusted_peers=["sbc.example.test"])
