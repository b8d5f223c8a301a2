"""The penalty blacklist (SIP Endpoint SDK algorithm) with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from sipha.dns import PenaltyBlacklist

A, B, C = "127.0.0.2:5060", "127.0.0.3:5060", "127.0.0.4:5060"


def test_penalty_free_targets_first_in_resolver_order() -> None:
    bl = PenaltyBlacklist(600)
    assert bl.select([A, B, C], now=0) == A
    bl.fail(A, now=10)
    assert bl.select([A, B, C], now=11) == B
    assert bl.order([A, B, C], now=11) == [B, C, A]


def test_all_penalised_takes_the_one_blacklisted_longest_ago() -> None:
    bl = PenaltyBlacklist(600)
    bl.fail(B, now=5)
    bl.fail(A, now=10)
    bl.fail(C, now=20)
    assert bl.select([A, B, C], now=30) == B
    assert bl.order([A, B, C], now=30) == [B, A, C]


def test_penalty_decays_and_entry_is_cleared_after_the_period() -> None:
    bl = PenaltyBlacklist(600)
    bl.fail(A, now=0)
    assert bl.penalty(A, now=0) == pytest.approx(1.0)
    assert bl.penalty(A, now=300) == pytest.approx(0.5)
    assert bl.penalty(A, now=599.9) == pytest.approx(0.0, abs=1e-3)
    assert A in bl.blacklisted(now=599.9)
    assert bl.penalty(A, now=600) == 0.0 and bl.blacklisted(now=600) == set()
    assert bl.select([A, B], now=600) == A  # back in first place


def test_repeated_failures_add_penalties_and_success_clears() -> None:
    bl = PenaltyBlacklist(100)
    bl.fail(A, now=0)
    bl.fail(A, now=50)
    assert bl.penalty(A, now=50) == pytest.approx(1.5)
    assert bl.penalty(A, now=120) == pytest.approx(0.3)  # the first failure has expired
    bl.succeed(A)
    assert bl.penalty(A, now=120) == 0.0


def test_exclude_skips_the_target_that_just_failed() -> None:
    bl = PenaltyBlacklist(600)
    assert bl.select([A, B], now=0, exclude=[A]) == B
    assert bl.select([A], now=0, exclude=[A]) is None
    bl.fail(B, now=1)
    assert bl.select([A, B], now=2, exclude=[A]) == B  # penalised, but the only one left


@pytest.mark.parametrize("fail_times", list(itertools.permutations([1.0, 2.0, 3.0])))
def test_order_is_a_permutation_sorted_by_last_failure(fail_times: tuple[float, ...]) -> None:
    bl = PenaltyBlacklist(600)
    for target, t in zip([A, B, C], fail_times, strict=True):
        bl.fail(target, now=t)
    order = bl.order([A, B, C], now=10)
    assert sorted(order) == sorted([A, B, C])
    assert [dict(zip([A, B, C], fail_times, strict=True))[t] for t in order] == sorted(fail_times)


def test_invalid_period() -> None:
    with pytest.raises(ValueError):
        PenaltyBlacklist(0)
