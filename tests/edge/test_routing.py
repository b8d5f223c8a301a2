"""The edge's dispatcher against SIPp destinations: alternative routing, time-outs,
transport errors, provisional-response rules, probing, weights, open relay."""

from __future__ import annotations

import time
from pathlib import Path

from tests.edge.helpers import (
    a_then_b,
    calls_through,
    pool,
    running_edge,
    sipp_destination,
    wait_dest_state,
)
from tests.edge.scenarios import ANSWER, REJECT_503, RING_THEN_503, SILENT, destination
from tests.sipp import free_port, needs_sipp

pytestmark = [needs_sipp]


async def test_503_without_18x_goes_to_b(tmp_path: Path) -> None:
    async with a_then_b(tmp_path, REJECT_503, ANSWER) as edge:
        await calls_through(tmp_path, edge, "180 200", n=5)
        da, db = edge.pools[0].destinations
        assert (da.calls, da.failed_by_code, db.answered) == (5, {503: 5}, 5)
        assert edge.pools[0].rerouted == 5


async def test_silent_a_goes_to_b_after_invite_timeout_and_a_is_taken_out_at_once(
    tmp_path: Path,
) -> None:
    async with a_then_b(tmp_path, SILENT, ANSWER, invite_timeout=1.0, probe_interval=30) as edge:
        start = time.monotonic()
        await calls_through(tmp_path, edge, "180 200", n=1)
        elapsed = time.monotonic() - start
        da = edge.pools[0].destinations[0]
        assert 1.0 <= elapsed < 2.5  # invite_timeout, then B answers
        assert da.state == "probing" and "no response to INVITE" in da.down_reason
        await calls_through(tmp_path, edge, "180 200", n=3)  # A is out: no more waiting
        assert da.calls == 1 and edge.pools[0].destinations[1].answered == 4


async def test_closed_tcp_port_goes_to_b_at_once(tmp_path: Path) -> None:
    async with sipp_destination(tmp_path, destination(ANSWER)) as b:
        closed = free_port()
        pools = [
            pool(
                "ivr",
                [f"sip:127.0.0.1:{closed};transport=tcp", f"sip:127.0.0.1:{b}"],
                algorithm="priority",
                probe_interval=60,
            )
        ]
        pools[0]["destination"][1]["priority"] = 1
        async with running_edge(tmp_path, pools) as edge:
            da = edge.pools[0].destinations[0]
            await wait_dest_state(edge, 0, 0, "probing")  # the first probe already failed
            da.healthy = True  # pretend it was up until now: the call itself must notice
            start = time.monotonic()
            await calls_through(tmp_path, edge, "180 200", n=1)
            assert time.monotonic() - start < 1.0
            assert da.calls == 1 and da.state == "probing" and "refused" in da.down_reason


async def test_180_then_503_never_relays_the_failure(tmp_path: Path) -> None:
    async with a_then_b(tmp_path, RING_THEN_503, ANSWER, reroute_after_provisional="never") as edge:
        await calls_through(tmp_path, edge, "180 503", n=3)
        assert edge.pools[0].destinations[1].calls == 0 and edge.pools[0].rerouted == 0


async def test_180_then_503_hold_reroutes_and_caller_sees_only_100_then_200(tmp_path: Path) -> None:
    async with a_then_b(tmp_path, RING_THEN_503, ANSWER, reroute_after_provisional="hold") as edge:
        # "200" alone: a 180 (from A or B) would fail the call; 100 is optional
        await calls_through(tmp_path, edge, "200", n=3)
        assert edge.pools[0].rerouted_after_18x == 3
        assert edge.pools[0].destinations[1].answered == 3


async def test_180_then_503_always_reroutes_after_relaying_18x(tmp_path: Path) -> None:
    async with a_then_b(
        tmp_path, RING_THEN_503, ANSWER, reroute_after_provisional="always"
    ) as edge:
        await calls_through(tmp_path, edge, "180 180 200", n=2)  # A's 180, B's 180, B's 200
        assert edge.pools[0].rerouted_after_18x == 2


async def test_options_503_takes_a_out_and_200_brings_it_back(tmp_path: Path) -> None:
    port_a = free_port()
    async with sipp_destination(tmp_path, destination(ANSWER)) as b:
        interval, fall, rise = 0.3, 2, 2
        pools = [
            pool(
                "ivr",
                [f"sip:127.0.0.1:{port_a}", f"sip:127.0.0.1:{b}"],
                probe_interval=interval,
                fall=fall,
                rise=rise,
            )
        ]
        async with running_edge(tmp_path, pools) as edge:
            async with sipp_destination(
                tmp_path, destination(ANSWER, options_code="503 Service Unavailable"), port=port_a
            ):
                out_after = await wait_dest_state(edge, 0, 0, "probing")
                assert out_after <= fall * interval + 0.6
                await calls_through(tmp_path, edge, "180 200", n=6)
                assert edge.pools[0].destinations[0].calls == 0  # no INVITE reached A
            async with sipp_destination(tmp_path, destination(ANSWER), port=port_a):
                back_after = await wait_dest_state(edge, 0, 0, "active")
                assert back_after <= rise * interval + 0.6
                await calls_through(tmp_path, edge, "180 200", n=4)
                assert edge.pools[0].destinations[0].answered >= 1


async def test_weighted_3_to_1_over_400_calls(tmp_path: Path) -> None:
    async with (
        sipp_destination(tmp_path, destination(ANSWER)) as a,
        sipp_destination(tmp_path, destination(ANSWER)) as b,
    ):
        pools = [pool("ivr", [f"sip:127.0.0.1:{a}", f"sip:127.0.0.1:{b}"], algorithm="weighted")]
        pools[0]["destination"][0]["weight"] = 3
        async with running_edge(tmp_path, pools) as edge:
            await wait_dest_state(edge, 0, 1, "active")
            await calls_through(tmp_path, edge, "180 200", n=400, rate=100)
            da, db = edge.pools[0].destinations
            assert abs(da.answered - 300) <= 30 and abs(db.answered - 100) <= 10
            assert da.answered + db.answered == 400


async def test_open_relay_is_refused(tmp_path: Path) -> None:
    from sipha.sip import Headers, Request
    from sipha.sip.transaction import Target
    from sipha.stack import SipStack

    async with (
        running_edge(tmp_path, registrar={"domains": ["example.test"]}) as edge,
        SipStack(["udp:127.0.0.1:0"]) as stack,
    ):
        port = edge.stack.local("udp").port
        for ruri in ("sip:victim@elsewhere.example", "sip:1000@203.0.113.9"):
            h = Headers.of(
                ("From", "<sip:x@127.0.0.1>;tag=1"),
                ("To", f"<{ruri}>"),
                ("Call-ID", f"relay-{ruri}"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:x@127.0.0.1>"),
            )
            resp = await stack.request(Request("INVITE", ruri, h), Target("udp", "127.0.0.1", port))
            assert resp.status == 403
        assert edge.counters["relay_denied"] == 2


async def test_no_destination_left_gets_503_retry_after(tmp_path: Path) -> None:
    async with (
        sipp_destination(tmp_path, destination(REJECT_503)) as a,
        running_edge(tmp_path, [pool("ivr", [f"sip:127.0.0.1:{a}"])]) as edge,
    ):
        await wait_dest_state(edge, 0, 0, "active")
        await calls_through(tmp_path, edge, "503", n=2)
        assert edge.pools[0].exhausted == 2
