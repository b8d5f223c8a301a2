"""Pool destinations the way operators write them: IPv6 literals (RFC 5118: ``[::1]``,
brackets in every URI the edge builds) and DNS names resolved the RFC 3263 way (SRV, then
A/AAAA, with the tests' DNS server on loopback). Two sipha appservers behind the edge take
calls from SIPp in both cases."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from sipha.appserver.server import AppServer
from tests.appserver.helpers import running_appserver, sip_port, wait_until
from tests.dnsserver import DnsServer
from tests.edge.helpers import edge_port, pool, running_edge
from tests.edge.scenarios import caller
from tests.sipp import free_port, needs_sipp, run_sipp

pytestmark = [needs_sipp]


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def two_appservers(tmp_path: Path, host: str) -> AsyncIterator[tuple[AppServer, AppServer]]:
    """Two appservers answering calls, listening (SIP and RTP) on ``host`` only."""
    servers = []
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            port = free_port_v6() if ":" in host else free_port()
            listen = f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"
            servers.append(await stack.enter_async_context(running_appserver(
                folder, sip={"listen": [listen]}, media={"address": host},
                app={"handler": "tests.apps:hold"},
            )))  # fmt: skip
        yield servers[0], servers[1]


async def call(tmp_path: Path, edge_host: str, port: int, n: int) -> None:
    """``n`` SIPp calls to sip:ivr@edge (each answered, then hung up by SIPp)."""
    path = tmp_path / f"caller-{free_port()}.xml"
    path.write_text(caller("200"))
    local = "::1" if ":" in edge_host else "127.0.0.1"
    remote = f"[{edge_host}]:{port}" if ":" in edge_host else f"{edge_host}:{port}"
    result = await run_sipp(
        "-sf", str(path), remote, "-s", "ivr", "-m", str(n), "-r", "10", "-i", local,
        "-p", str(free_port_v6() if ":" in local else free_port()), timeout=60,
    )  # fmt: skip
    assert result.ok, result.output[-3000:]
    assert re.search(rf"Successful call\s*\|\s*\d+\s*\|\s*{n}\b", result.output)


async def test_an_ipv6_pool_of_two_appservers_takes_calls(tmp_path: Path) -> None:
    async with two_appservers(tmp_path, "::1") as (a, b):
        port = free_port_v6()
        dests = [f"sip:[::1]:{sip_port(a)}", f"sip:[::1]:{sip_port(b)}"]
        async with running_edge(
            tmp_path, [pool("ivr", dests, algorithm="round-robin")],
            sip={"listen": [f"udp:[::1]:{port}"]},
        ) as edge:  # fmt: skip
            # the probes (From sip:edge@[::1]) were answered 200: both destinations are up
            await wait_until(lambda: all(d.healthy for d in edge.pools[0].destinations), 5)
            await call(tmp_path, "::1", edge_port(edge), 10)
            da, db = edge.pools[0].destinations
            assert (da.answered, db.answered) == (5, 5)
    assert (a.counters.get("answered"), b.counters.get("answered")) == (5, 5)


async def test_pool_destinations_named_by_srv_records(tmp_path: Path) -> None:
    # sip:ivr-a.example.test has no port: RFC 3263 §4.2 SRV _sip._udp first, then A
    async with two_appservers(tmp_path, "127.0.0.1") as (a, b):
        with DnsServer() as dns:
            for name, server in (("ivr-a", a), ("ivr-b", b)):
                dns.add(f"_sip._udp.{name}.example.test", "SRV",
                        f"10 1 {sip_port(server)} host-{name}.example.test.")  # fmt: skip
                dns.add(f"host-{name}.example.test", "A", "127.0.0.1")
            dests = ["sip:ivr-a.example.test", "sip:ivr-b.example.test"]
            async with running_edge(
                tmp_path, [pool("ivr", dests, algorithm="round-robin")],
                dns={"nameservers": [dns.address], "hosts_file": ""},
            ) as edge:  # fmt: skip
                await wait_until(lambda: all(d.healthy for d in edge.pools[0].destinations), 5)
                await call(tmp_path, "127.0.0.1", edge_port(edge), 10)
                da, db = edge.pools[0].destinations
                assert (da.answered, db.answered) == (5, 5)
            assert dns.queries[("_sip._udp.ivr-a.example.test", "SRV")] >= 1
            assert dns.queries[("host-ivr-b.example.test", "A")] >= 1
    assert (a.counters.get("answered"), b.counters.get("answered")) == (5, 5)
