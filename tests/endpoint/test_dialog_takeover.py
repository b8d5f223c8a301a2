"""A call outlives the edge node that set it up: two edge nodes share Redis (dialogs
included) and one DNS name; the node that carried the INVITE is SIGKILLed together with
the callee (a site going down). The caller's next in-dialog request reaches the other
node, which takes the call over, finds the callee gone with its keep-alives and sends the
caller a BYE with a Reason."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from sipha.endpoint import SessionEvent
from tests.dnsserver import DnsServer
from tests.edge.scenarios import BYE, callee
from tests.sipp import free_port, needs_sipp, sipp_process

from .helpers import (
    PASSWORD,
    REALM,
    conn,
    edge_node,
    free_port_on,
    phone_config,
    running_phone,
    users_file,
)

pytestmark = [needs_sipp]

A, B = "127.0.0.2", "127.0.0.3"
DIALOGS = {"keepalive_interval": 1.0, "keepalive_failures": 2, "keepalive_timeout": 1.0}


async def dialogs_of(admin: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(admin + "/dialogs") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def test_the_other_node_takes_the_call_over_and_ends_it_when_the_callee_is_gone(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port_on(A, B)
    callee_port = free_port()
    users = users_file(tmp_path, {"1001": PASSWORD})
    pools = [{"name": "ivr", "match": "^sip:ivr@", "probe_interval": 30.0,
              "destination": [{"uri": f"sip:127.0.0.1:{callee_port}"}]}]  # fmt: skip
    with DnsServer() as dns:
        dns.add(REALM, "A", A, B)
        async with (
            sipp_process(tmp_path, "callee", callee(BYE), "-p", str(callee_port)) as sipp,
            edge_node(tmp_path, A, port, redis_url, users, pools, DIALOGS) as na,
            edge_node(tmp_path, B, port, redis_url, users, pools, DIALOGS) as nb,
            running_phone(phone_config(dns.address, [conn("1001", port)])) as (alice, rec),
        ):
            await alice.wait_registered(0)
            session = await alice.dial("ivr")
            await session.wait_for("established", 10)
            carried = [n for n in (na, nb) if (await dialogs_of(n.admin))["count"] == 1]
            assert len(carried) == 1, "one node keeps the call alive"
            (first,) = carried
            other = nb if first is na else na
            assert (await dialogs_of(other.admin))["count"] == 0

            # the site goes: the node that set the call up, and the callee, at once
            first.kill()
            sipp.kill()
            killed = time.monotonic()
            # the caller puts the call on hold: its re-INVITE goes to the other node
            # (after one sip_transaction_timeout on the dead one)
            hold = asyncio.ensure_future(session.hold())
            await session.wait_for("disconnected", 15)
            hold.cancel()
            took = time.monotonic() - killed
            print(f"node + callee killed -> caller's call ended by the other node: {took:.2f} s")

            listing = await dialogs_of(other.admin)
            assert listing["adopted"] == 1, listing
            assert listing["ended"] == {"callee unreachable": 1}, listing
            assert listing["count"] == 0
            ended = [e for e in rec.sessions(session.id) if isinstance(e, SessionEvent)]
            assert ended[-1].state == "disconnected"
            assert ended[-1].reason == (
                'remote hangup (SIP;cause=408;text="callee unreachable")'), ended[-1].reason
            # one sip_transaction_timeout (1 s) to reach the other node, then the keep-alive
            # interval x failures with the last time-out: 1 + 1 x 2 + 1, and a margin
            assert took < 6.5, took
