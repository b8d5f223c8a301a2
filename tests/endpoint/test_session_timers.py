"""RFC 4028 between the endpoint SDK and the appserver, through the edge (which passes the
headers along): whichever side is the refresher refreshes every half interval, so a call
longer than its session interval stays up; each side's clock shows the refreshes.
Intervals of seconds (``min_se = 2``, for tests) keep it short."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.appserver.helpers import running_appserver, sip_port
from tests.dnsserver import DnsServer
from tests.edge.helpers import edge_port, pool, running_edge

from .helpers import REALM, conn, phone_config, running_phone


@pytest.mark.parametrize("refresher", ["uac", "uas"])
async def test_a_call_longer_than_its_session_interval_is_refreshed_by_the_refresher(
    tmp_path: Path, refresher: str
) -> None:
    interval = 4
    async with running_appserver(
        tmp_path, app={"handler": "tests.apps:hold"},
        session_timer={"expires": 1800, "min_se": 2},
    ) as app:  # fmt: skip
        pools = [pool("ivr", [f"sip:127.0.0.1:{sip_port(app)}"], match="^sip:ivr@")]
        async with running_edge(tmp_path, pools, registrar={"domains": [REALM]}) as edge:
            with DnsServer() as dns:
                dns.add(REALM, "A", "127.0.0.1")
                config = phone_config(dns.address, [conn("1001", edge_port(edge))])
                config = config.model_copy(update={"session_timer": config.session_timer.model_copy(
                    update={"expires": interval, "min_se": 2, "refresher": refresher})})
                async with running_phone(config) as (phone, _):
                    await phone.wait_registered(0)
                    session = await phone.dial("ivr")
                    await session.wait_for("established", 10)
                    clock = session._clock
                    assert clock is not None and clock.interval == interval
                    assert clock.we_refresh == (refresher == "uac")
                    (call,) = [c for c in app.calls.values() if c.id == session.call_id]
                    assert call._clock is not None
                    assert call._clock.we_refresh == (refresher == "uas")
                    started = clock.refreshed_at
                    # 7 s: past the 2.67 s at which an unrefreshed session would be ended
                    await asyncio.sleep(7.0)
                    assert session.state == "established"
                    assert not call.ended.is_set()
                    refreshed = clock.refreshed_at - started
                    # the last refresh within the last half interval (about every 2 s)
                    assert refreshed > 7.0 - interval / 2 - 0.5, refreshed
                    assert time.monotonic() - call._clock.refreshed_at < interval / 2 + 0.5
                    await session.hangup()
                    await session.wait_for("disconnected", 5)
                    await asyncio.wait_for(call.ended.wait(), 5)
                    assert call.end_reason == "caller hung up"
