"""The message pipeline of a running edge (issue 12): what it costs an attacker's flood,
and what a call leaves behind for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from sipha.sip.timers import TimerConfig
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import InboundCall, UserAgent, simple_sdp
from tests.edge.helpers import calls_through, pool, running_edge, sipp_destination, wait_dest_state
from tests.edge.raw import raw_peer
from tests.edge.scenarios import ANSWER, destination
from tests.sipp import needs_sipp

MALFORMED = b"INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.5;branch=z9hG4bKbad\r\nCSeq: x\r\n\r\n"


async def test_a_malformed_flood_is_limited_before_parsing_and_calls_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as callee:

        async def answer(call: InboundCall) -> None:
            call.answer(simple_sdp("127.0.0.1", 40000))

        UserAgent(callee, on_invite=answer)
        dest = f"sip:127.0.0.1:{callee.local().port}"
        protection = {"rate": 50, "burst": 50, "hard_limit": 100}
        with caplog.at_level(logging.INFO, logger="sipha.sip.core"):
            async with running_edge(tmp_path, [pool("ivr", [dest])], protection=protection) as edge:
                await wait_dest_state(edge, 0, 0, "active")
                port = edge.stack.local().port

                async def flood() -> None:
                    async with raw_peer("127.0.0.5") as p:
                        for i in range(3000):  # ~2,000/s for 1.5 s
                            p.send(MALFORMED, ("127.0.0.1", port))
                            if i % 40 == 39:
                                await asyncio.sleep(0.02)

                flooding = asyncio.create_task(flood())
                answered = 0
                async with SipStack(["udp:127.0.0.6:0"]) as caller:
                    ua = UserAgent(caller)
                    while not flooding.done():
                        call = await ua.invite(f"sip:ivr@127.0.0.1:{port}",
                                               target=Target("udp", "127.0.0.1", port),
                                               body=simple_sdp("127.0.0.6", 40002))  # fmt: skip
                        await call.bye()
                        answered += 1
                        await asyncio.sleep(0.1)  # a caller well under the rate limit
                await flooding
                guard, stats = edge.guard, edge.stack.stats
                # the flood: most datagrams dropped unread; at most ~(burst + rate x 1.5 s)
                # parsed and answered 400; the rest parsed only to be dropped
                assert guard.dropped >= 2500, guard.counters()
                assert stats.bad_requests <= 150, stats
                assert answered >= 5  # calls from another address went on meanwhile
    lines = [r for r in caplog.records if "bad request from 127.0.0.5" in r.getMessage()]
    assert len(lines) == 1  # one log line, not thousands


@needs_sipp
async def test_a_proxied_call_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """Everything a call builds on the edge must die by reference count: the edge runs with
    automatic full collections off (sipha.runtime), so a cycle per call would be a leak."""
    async with (
        sipp_destination(tmp_path, destination(ANSWER)) as a,
        running_edge(tmp_path, [pool("ivr", [f"sip:127.0.0.1:{a}"])]) as edge,
    ):
        edge.stack.layer.timers = TimerConfig(t1=0.01, t2=0.04, t4=0.05, timer_c=1.0)
        await wait_dest_state(edge, 0, 0, "active")
        gc.collect()
        gc.disable()
        try:
            await calls_through(tmp_path, edge, "180 200", n=50, rate=50)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while edge.stack.layer.size() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert edge.stack.layer.size() == 0
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            ours = [o for o in gc.garbage if type(o).__module__.startswith("sipha")]
            assert ours == [], sorted({type(o).__qualname__ for o in ours})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
