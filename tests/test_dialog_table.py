"""The edge's dialog table, sans-I/O: when keep-alives are due, when a call is over and
for whom, and the bound on what is remembered."""

from __future__ import annotations

from sipha.edge.dialog_table import DialogTable, Side, TrackedDialog, dead_answer


def dialog(call_id: str, destination: str = "sip:a") -> TrackedDialog:
    return TrackedDialog(
        call_id,
        Side("<sip:alice@x>", "t1", "sip:alice@192.0.2.1", [], "udp:192.0.2.1:5060", 1),
        Side("<sip:ivr@x>", "t2", "sip:ivr@192.0.2.2", [], "udp:192.0.2.2:5060"),
        pool="ivr", destination=destination,
    )  # fmt: skip


def test_keepalives_come_due_every_interval_and_a_removed_dialog_never_does() -> None:
    table = DialogTable(interval=30.0, failures=2, max=10)
    a, b = dialog("a"), dialog("b")
    table.add(a, 0.0)
    table.add(b, 10.0)
    assert table.due(29.9) == []
    assert table.due(30.0) == [a]
    assert table.next_due() == 40.0
    assert table.due(40.0) == [b]
    table.remove("a")
    assert table.due(100.0) == [b]  # a's stale heap entry is skipped


def test_two_failures_in_a_row_end_the_call_both_ways_the_live_side_first() -> None:
    table = DialogTable(interval=1.0, failures=2, max=10)
    d = dialog("c")
    table.add(d, 0.0)
    assert table.answered(d, "callee", False, 1.0) is None
    assert table.answered(d, "caller", True, 1.0) is None
    assert table.answered(d, "callee", True, 2.0) is None  # an answer forgives
    assert table.answered(d, "callee", False, 3.0) is None
    verdict = table.answered(d, "callee", False, 4.0)
    assert verdict is not None
    assert (verdict.reason, verdict.bye_to) == ("callee unreachable", ("caller", "callee"))
    assert len(table) == 0 and d.ended
    assert table.answered(d, "caller", False, 5.0) is None  # late outcomes change nothing


def test_both_sides_gone_ends_the_call_with_a_bye_to_each() -> None:
    table = DialogTable(interval=1.0, failures=1, max=10)
    d = dialog("d")
    table.add(d, 0.0)
    d.caller.failures = 1  # the caller already failed its last check
    verdict = table.answered(d, "callee", False, 1.0)
    assert verdict is not None and verdict.reason == "both unreachable"
    assert verdict.bye_to == ("caller", "callee")


def test_a_failed_destinations_calls_are_checked_at_once_paced() -> None:
    table = DialogTable(interval=30.0, failures=2, max=10)
    calls = [dialog(str(i)) for i in range(3)]
    for d in calls:
        table.add(d, 0.0)
    table.check_soon(calls, 5.0, 0.01)
    assert table.due(5.0) == [calls[0]]
    assert table.due(5.02) == calls[1:]
    assert table.due(34.9) == [] and table.due(35.02) == calls  # then every interval again


def test_the_table_is_bounded_oldest_forgotten_first() -> None:
    table = DialogTable(interval=0.0, failures=2, max=2)
    for name in ("x", "y", "z"):
        table.add(dialog(name), 0.0)
    assert [d.call_id for d in table] == ["y", "z"] and table.forgotten == 1
    assert table.next_due() is None  # interval 0: tracked, never kept alive


def test_only_408_and_481_say_the_dialog_is_gone() -> None:
    assert [s for s in (200, 405, 408, 481, 500, 501) if dead_answer(s)] == [408, 481]


def test_a_dialog_survives_the_store_as_json() -> None:
    d = dialog("e")
    d.callee.routes = ["<sip:proxy.example;lr>"]
    d.caller.cseq = 7
    back = TrackedDialog.from_dict(d.to_dict())
    assert back.to_dict() == d.to_dict()
    assert back.sender_of("t2") == "callee" and back.sender_of("zz") is None


def test_dialogs_without_a_bye_are_forgotten_after_their_lifetime() -> None:
    table = DialogTable(interval=0.0, failures=2, max=10)
    for name, created in (("old", 100.0), ("older-but-later", 50.0), ("new", 500.0)):
        d = dialog(name)
        d.created = created
        table.add(d, 0.0)
    # the oldest first, in the order they came: it stops at the first one still young
    assert table.expire(before=200.0) == 2
    assert [d.call_id for d in table] == ["new"] and table.expired == 2
