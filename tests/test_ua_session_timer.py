"""RFC 4028 in ``sipha.ua``: two user agents on loopback with session timers; the
refresher keeps a call longer than its interval up, and one that is left without
refreshes (the peer does not use timers and we are not the refresher) is ended."""

from __future__ import annotations

import asyncio

import pytest

from sipha.sip.session_timer import TimerPolicy
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import InboundCall, UserAgent, simple_sdp

SHORT = TimerPolicy(expires=4, min_se=2)


@pytest.mark.parametrize("refresher", ["uac", "uas"])
async def test_the_refresher_keeps_a_call_up_past_its_interval(refresher: str) -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as a, SipStack(["udp:127.0.0.1:0"]) as b:
        taken: list[InboundCall] = []

        async def on_invite(call: InboundCall) -> None:
            taken.append(call)
            call.answer(simple_sdp("127.0.0.1", 4000))

        policy = TimerPolicy(expires=4, min_se=2, refresher=refresher)  # type: ignore[arg-type]
        UserAgent(b, on_invite=on_invite, session_timer=SHORT)
        caller = UserAgent(a, session_timer=policy)
        port = b.local().port
        call = await caller.invite(f"sip:b@127.0.0.1:{port}", target=Target("udp", "127.0.0.1", port),
                                   body=simple_sdp("127.0.0.1", 5000))  # fmt: skip
        assert call.clock is not None and call.clock.interval == 4
        assert call.clock.we_refresh == (refresher == "uac")
        start = call.clock.refreshed_at
        await asyncio.sleep(6.0)  # unrefreshed, either side would end it at 2.67 s
        assert not call.ended.is_set() and not taken[0].ended.is_set()
        assert call.clock.refreshed_at - start > 3.0  # refreshed about every 2 s
        bye = await call.bye()
        assert bye is not None and bye.status == 200


async def test_without_refreshes_the_call_ends_with_a_reason() -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as a, SipStack(["udp:127.0.0.1:0"]) as b:
        taken: list[InboundCall] = []

        async def on_invite(call: InboundCall) -> None:
            taken.append(call)
            call.answer(simple_sdp("127.0.0.1", 4000))

        # the callee does timers and wants the caller to refresh; the caller says it
        # supports them, then never refreshes: the callee gives up after 2.67 s
        UserAgent(b, on_invite=on_invite, session_timer=TimerPolicy(expires=4, min_se=2,
                                                                    refresher="uac"))  # fmt: skip
        caller = UserAgent(a, session_timer=TimerPolicy(expires=1800, min_se=2))
        port = b.local().port
        call = await caller.invite(f"sip:b@127.0.0.1:{port}", target=Target("udp", "127.0.0.1", port),
                                   body=simple_sdp("127.0.0.1", 5000))  # fmt: skip
        assert call.clock is not None and call.clock.we_refresh
        assert call._timer is not None
        call._timer.stop()  # this caller will never refresh (nor give up)
        await asyncio.wait_for(call.ended.wait(), 5)
        assert call.end_reason == "remote BYE"
        assert taken[0].end_reason == "session expired"
