"""Dispatcher selection algorithms and destination states (pure)."""

from __future__ import annotations

from collections import Counter

from sipha.edge.config import Pool
from sipha.edge.pools import PoolRuntime


def pool(algorithm: str, *dests: tuple[int, int], fall: int = 1, rise: int = 1) -> PoolRuntime:
    return PoolRuntime(
        Pool(
            name="p",
            match=".",
            algorithm=algorithm,  # type: ignore[arg-type]
            fall=fall,
            rise=rise,
            destination=[
                {"uri": f"sip:10.0.0.{i}", "weight": w, "priority": p}
                for i, (w, p) in enumerate(dests)
            ],  # type: ignore[misc]
        )
    )


def picks(p: PoolRuntime, n: int) -> Counter[int]:
    out: Counter[int] = Counter()
    for i in range(n):
        d = p.select(f"call-{i}", set())
        assert d is not None
        out[d.index] += 1
    return out


def test_round_robin_and_exclusion() -> None:
    p = pool("round-robin", (1, 0), (1, 0), (1, 0))
    assert picks(p, 9) == {0: 3, 1: 3, 2: 3}
    assert p.select("x", {0, 1}).index == 2  # type: ignore[union-attr]
    assert p.select("x", {0, 1, 2}) is None


def test_weighted_is_exact_and_smooth() -> None:
    p = pool("weighted", (3, 0), (1, 0))
    assert picks(p, 400) == {0: 300, 1: 100}
    seq = [p.select("c", set()).index for _ in range(8)]  # type: ignore[union-attr]
    assert seq.count(1) == 2 and seq[:4].count(1) == 1  # interleaved, not 3 then 1 in bursts


def test_priority_with_failover() -> None:
    p = pool("priority", (1, 5), (1, 1), (1, 1))
    assert set(picks(p, 4)) == {1, 2}
    p.mark_down(p.destinations[1], "timeout")
    p.mark_down(p.destinations[2], "timeout")
    assert picks(p, 2) == {0: 2}


def test_least_calls_and_hash_callid() -> None:
    p = pool("least-calls", (1, 0), (1, 0))
    p.destinations[0].active_calls = 5
    assert picks(p, 3) == {1: 3}
    h = pool("hash-callid", (1, 0), (1, 0), (1, 0))
    assert h.select("abc", set()) is h.select("abc", set())


def test_fall_rise_and_admin_states() -> None:
    p = pool("round-robin", (1, 0), (1, 0), fall=2, rise=2)
    d = p.destinations[0]
    assert p.record_probe(d, False, 503, "503", 1.0) is None
    assert p.record_probe(d, False, 503, "503", 1.0) is False and d.state == "probing"
    assert picks(p, 3) == {1: 3}
    assert p.record_probe(d, True, 200, "200", 1.0) is None
    assert p.record_probe(d, True, 200, "200", 2.0) is True and d.state == "active"
    assert d.latency.count == 4 and d.latency.max_ms == 2.0
    d.admin_state = "drained"
    assert d.state == "drained" and not d.selectable and d.probed
    d.admin_state = "disabled"
    assert not d.probed
