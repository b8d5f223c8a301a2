"""RFC 3261 §16 proxy rules: validation answers, transport switching, CANCEL forwarding."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipha.sip import Headers, Request
from sipha.sip.transaction import Target
from sipha.stack import SipStack
from sipha.ua import InboundCall, UserAgent
from tests.edge.helpers import calls_through, pool, running_edge, sipp_destination, wait_dest_state
from tests.edge.scenarios import ANSWER, destination
from tests.sipp import needs_sipp


def invite(ruri: str, **extra: str) -> Request:
    h = Headers.of(
        ("From", "<sip:x@127.0.0.1>;tag=1"),
        ("To", f"<{ruri}>"),
        ("Call-ID", f"rules-{ruri}-{len(extra)}"),
        ("CSeq", "1 INVITE"),
        ("Contact", "<sip:x@127.0.0.1>"),
    )
    for name, value in extra.items():
        h.set(name.replace("_", "-"), value)
    return Request("INVITE", ruri, h)


async def test_validation_483_420_416(tmp_path: Path) -> None:
    pools = [pool("ivr", ["sip:127.0.0.1:9"], probe_interval=60)]
    async with running_edge(tmp_path, pools) as edge, SipStack(["udp:127.0.0.1:0"]) as stack:
        port = edge.stack.local().port
        target = Target("udp", "127.0.0.1", port)
        assert (
            await stack.request(invite(f"sip:ivr@127.0.0.1:{port}", Max_Forwards="0"), target)
        ).status == 483
        r = await stack.request(
            invite(f"sip:ivr@127.0.0.1:{port}", Proxy_Require="foo, bar"), target
        )
        assert r.status == 420 and r.headers.get("Unsupported") == "foo, bar"
        assert (await stack.request(invite("tel:+15551234567"), target)).status == 416


async def test_loop_detected_482(tmp_path: Path) -> None:
    async with running_edge(tmp_path) as edge, SipStack(["udp:127.0.0.1:0"]) as stack:
        port = edge.stack.local().port
        # the edge's pool sends the call to... the edge itself: the request comes back
        edge.pools = []
        from sipha.edge.config import Pool
        from sipha.edge.pools import PoolRuntime

        edge.pools.append(
            PoolRuntime(
                Pool(name="loop", match="^sip:ivr@", destination=[{"uri": f"sip:127.0.0.1:{port}"}])
            )
        )  # type: ignore[list-item]
        resp = await stack.request(
            invite(f"sip:ivr@127.0.0.1:{port}"), Target("udp", "127.0.0.1", port)
        )
        assert resp.status == 482


@needs_sipp
async def test_udp_in_tcp_out_with_double_record_route(tmp_path: Path) -> None:
    async with sipp_destination(tmp_path, destination(ANSWER), transport="tcp") as b:
        pools = [pool("ivr", [f"sip:127.0.0.1:{b};transport=tcp"])]
        async with running_edge(tmp_path, pools) as edge:
            await wait_dest_state(edge, 0, 0, "active")
            await calls_through(
                tmp_path, edge, "180 200", n=5
            )  # BYE follows the double Record-Route
            assert edge.pools[0].destinations[0].answered == 5


async def test_cancel_is_forwarded_to_the_pending_branch(tmp_path: Path) -> None:
    async with SipStack(["udp:127.0.0.1:0"]) as callee_stack:
        cancelled = asyncio.Event()

        async def on_invite(call: InboundCall) -> None:
            call.ring()
            await call.incoming.cancelled.wait()
            cancelled.set()

        UserAgent(callee_stack, on_invite=on_invite)
        dest = f"sip:127.0.0.1:{callee_stack.local().port}"
        async with (
            running_edge(tmp_path, [pool("ivr", [dest])]) as edge,
            SipStack(["udp:127.0.0.1:0"]) as caller,
        ):
            await wait_dest_state(edge, 0, 0, "active")
            port = edge.stack.local().port
            rang = asyncio.Event()
            txn, future = caller.send_request(
                invite(f"sip:ivr@127.0.0.1:{port}"),
                Target("udp", "127.0.0.1", port),
                on_provisional=lambda r: r.status == 180 and rang.set(),
            )
            await asyncio.wait_for(rang.wait(), 3)
            assert (await caller.cancel(txn)).status == 200
            final = await asyncio.wait_for(future, 3)
            assert final.status == 487  # the callee's 487, relayed
            await asyncio.wait_for(cancelled.wait(), 3)
