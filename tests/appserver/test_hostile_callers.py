"""What a careless or hostile caller sends to the appserver (issue 11, findings 7, 11).

A call that can never be answered is refused *before* any 18x (488 for an offer without
G.711 or with a c= that is not an address, 400 without Contact), so an SBC may still
route it elsewhere; SIPp fails the call on any 18x. A CANCEL that beats the
application's ring() ends the call quietly (counted as cancelled, not as an
application error). The appserver has the edge's guard: a scanner is cut off.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipha.sip import Headers, Request
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import simple_sdp
from tests.appserver.helpers import (
    SDP,
    invite_expect_reject,
    running_appserver,
    sip_port,
    wait_until,
)
from tests.appserver.test_signalling import sipp_expect
from tests.edge.raw import raw_peer, request
from tests.sipp import needs_sipp

G729_ONLY = SDP.replace("RTP/AVP 0 101", "RTP/AVP 18").replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
BAD_PT = SDP.replace("RTP/AVP 0 101", "RTP/AVP 0 300")
BAD_C = SDP.replace("c=IN IP[media_ip_type] [media_ip]", "c=IN IP4 not-an-address")


@needs_sipp
@pytest.mark.parametrize(
    ("sdp", "contact", "code", "outcome"),
    [
        (G729_ONLY, True, 488, "rejected_sdp"),
        (BAD_PT, True, 488, "rejected_sdp"),
        (BAD_C, True, 488, "rejected_sdp"),
        (SDP, False, 400, "rejected_bad_request"),
    ],
    ids=["no-common-codec", "payload-type-300", "c-not-an-address", "no-contact"],
)
async def test_unanswerable_invites_are_refused_before_any_18x(
    tmp_path: Path, sdp: str, contact: bool, code: int, outcome: str
) -> None:
    # the ringing app would send 180 at once: the refusal must come before it runs
    async with running_appserver(tmp_path, app={"handler": "tests.apps:think_then_ring"}) as server:
        await sipp_expect(tmp_path, sip_port(server), invite_expect_reject(code, sdp=sdp, contact=contact), 1, "-s", "ivr")
        await wait_until(lambda: server.channels_used == 0)
        assert server.counters == {outcome: 1}


async def test_cancel_before_the_app_rings_is_a_cancelled_call_not_an_error(tmp_path: Path) -> None:
    async with (
        running_appserver(tmp_path, app={"handler": "tests.apps:think_then_ring"}) as server,
        SipStack(["udp:127.0.0.1:0"]) as caller,
    ):
        port = sip_port(server)
        h = Headers.of(("From", "<sip:c@127.0.0.1>;tag=c1"), ("To", f"<sip:ivr@127.0.0.1:{port}>"),
                       ("Call-ID", "cancel-early"), ("CSeq", "1 INVITE"), ("Contact", "<sip:c@127.0.0.1>"),
                       ("Content-Type", "application/sdp"))  # fmt: skip
        invite = Request("INVITE", f"sip:ivr@127.0.0.1:{port}", h, simple_sdp("127.0.0.1", 40000))
        trying = asyncio.Event()
        txn, final = caller.send_request(
            invite, Target("udp", "127.0.0.1", port), on_provisional=lambda r: trying.set()
        )
        await asyncio.wait_for(trying.wait(), 2)
        assert (await caller.cancel(txn)).status == 200  # before the app's ring()
        assert (await asyncio.wait_for(final, 3)).status == 487
        await wait_until(lambda: server.channels_used == 0)
        await asyncio.sleep(0.5)  # the app wakes up and tries to ring: nothing breaks
        assert server.counters == {"cancelled": 1}


async def test_the_appserver_cuts_off_a_scanner(tmp_path: Path) -> None:
    routes = [{"number": "^1000$", "handler": "tests.apps:hold"}]
    async with running_appserver(
        tmp_path, app={"handler": "tests.apps:hold", "route": routes},
        protection={"scanner_threshold": 10},
    ) as server:  # fmt: skip
        port = sip_port(server)
        async with raw_peer("127.0.0.90") as scanner:
            answered = 0
            for ext in range(100, 130):  # numbers that do not exist: 404 each
                scanner.send(request("INVITE", f"sip:{ext}@127.0.0.1:{port}", scanner,
                                     call_id=f"scan-{ext}"), ("127.0.0.1", port))  # fmt: skip
                try:
                    await scanner.response(timeout=0.3, call_id=f"scan-{ext}")
                    answered += 1
                except TimeoutError:
                    pass
        assert answered == 10 and server.guard.scanners_detected == 1
        async with raw_peer("127.0.0.91") as scanner:  # svmap's User-Agent: never answered
            scanner.send(request("OPTIONS", f"sip:127.0.0.1:{port}", scanner,
                                 extra="User-Agent: friendly-scanner"), ("127.0.0.1", port))  # fmt: skip
            with pytest.raises(TimeoutError):
                await scanner.response(timeout=0.5)
