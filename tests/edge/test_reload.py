"""The edge reloads its config on a file edit and on SIGHUP, with calls running: pools,
destinations, probing, registrar users; a destination that stays keeps its state and
counts; a removed one gets no new calls; an invalid file keeps the last good one (logged,
counted, shown in status). SIPp callers and callees, 0 calls failed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from tests.appserver.helpers import toml, wait_until
from tests.edge.helpers import edge_config, pool, sipp_destination
from tests.edge.scenarios import ANSWER, destination
from tests.endpoint.helpers import PASSWORD, REALM, users_file
from tests.sipp import free_port, needs_sipp

pytestmark = [needs_sipp]


async def test_pools_change_under_load_and_no_call_fails(tmp_path: Path) -> None:
    from sipha.edge.server import EdgeServer
    from tests.edge.helpers import calls_through

    async with (
        sipp_destination(tmp_path, destination(ANSWER)) as a,
        sipp_destination(tmp_path, destination(ANSWER)) as b,
        sipp_destination(tmp_path, destination(ANSWER)) as c,
    ):
        port = free_port()
        path = tmp_path / "edge.toml"

        def write(dests: list[int], **kw: object) -> None:
            p = pool("ivr", [f"sip:127.0.0.1:{d}" for d in dests], algorithm="round-robin",
                     probe_interval=0.3, **kw)  # fmt: skip
            path.write_text(toml(edge_config(port, [p])))

        write([a, b])
        edge = EdgeServer(path)
        await edge.start()
        try:
            await wait_until(lambda: all(d.last_probe_code == 200
                                         for d in edge.pools[0].destinations), 5)  # fmt: skip
            # 80 calls at 20/s; a second into them B goes and C comes
            calls = asyncio.create_task(calls_through(tmp_path, edge, "180 200", n=80, rate=20))
            await wait_until(lambda: edge.pools[0].calls >= 15, 10)
            before = {str(d.uri): d.calls for d in edge.pools[0].destinations}
            version = edge.holder.version
            write([a, c], probe_timeout=0.4)
            await wait_until(lambda: edge.holder.version == version + 1, 3)
            reloaded_at = edge.pools[0].calls
            dests = {str(d.uri): d for d in edge.pools[0].destinations}
            a_uri, b_uri, c_uri = (f"sip:127.0.0.1:{p}" for p in (a, b, c))
            assert set(dests) == {a_uri, c_uri}
            assert dests[a_uri].calls >= before[a_uri] > 0  # A kept its counts and state
            assert edge.pools[0].cfg.probe_timeout == 0.4
            output = await calls  # every call succeeded (calls_through asserts SIPp's result)
            assert re.search(r"Successful call\s*\|\s*\d+\s*\|\s*80\b", output)
            assert re.search(r"Failed call\s*\|\s*\d+\s*\|\s*0\b", output)
            after = edge.pools[0]
            assert after.calls == 80 and reloaded_at < 80
            assert dests[c_uri].calls > 0  # the new destination took calls
            # nothing new for B: what it had before is all it got
            assert dests[a_uri].calls + dests[c_uri].calls + before[b_uri] >= 80 - 2

            # an invalid edit: refused, the last good config stays, status and metrics say so
            path.write_text(path.read_text().replace('algorithm = "round-robin"',
                                                     'algorithm = "fastest"'))  # fmt: skip
            await wait_until(lambda: edge.holder.last_error is not None, 3)
            assert edge.holder.version == version + 1
            assert "pool[0].algorithm" in edge.holder.last_error
            status = await edge.status()
            assert status["config"]["last_reload_error"] == edge.holder.last_error
            edge.metrics.update(edge)
            assert "sipha_config_reload_errors_total 1.0" in edge.metrics.render().decode()
            assert {str(d.uri) for d in edge.pools[0].destinations} == {a_uri, c_uri}
        finally:
            await edge.close()


async def test_sighup_reloads_the_users_file_of_a_running_edge(tmp_path: Path) -> None:
    """A new user added to the users file can register after SIGHUP to `sipha edge`."""
    from tests.dnsserver import DnsServer
    from tests.endpoint.helpers import conn, phone_config, running_phone

    port = free_port()
    users = users_file(tmp_path, {"1001": PASSWORD})
    registrar = {"domains": [REALM], "users_file": str(users), "min_expires": 1}
    path = tmp_path / "etc" / "edge.toml"  # the users file is elsewhere: only SIGHUP sees it
    path.parent.mkdir()
    path.write_text(toml(edge_config(port, None, registrar=registrar)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipha", "edge", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
        assert "ready on" in line, line  # NOTICE: one line at start
        with DnsServer() as dns:
            dns.add(REALM, "A", "127.0.0.1")

            async def registers(user: str) -> bool:
                """registered, or unavailable (refused), as the phone reports it"""
                config = phone_config(dns.address, [conn(user, port, reg_interval=0)])
                async with running_phone(config) as (_, rec):
                    first = await rec.wait(event="connection_status", timeout=5)
                    return getattr(first, "status", "") == "registered"

            assert await registers("1001")
            assert not await registers("1002")  # unknown: 403/404
            users_file(tmp_path, {"1001": PASSWORD, "1002": PASSWORD})
            await asyncio.sleep(0.3)
            assert not await registers("1002")  # not watched: nothing yet
            os.kill(proc.pid, signal.SIGHUP)
            line = (await asyncio.wait_for(proc.stderr.readline(), 5)).decode()
            assert "config version 2" in line, line
            assert await registers("1002")
    finally:
        proc.terminate()
        await proc.communicate()
