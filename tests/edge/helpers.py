"""An edge in the test's event loop, SIPp destinations behind it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sipha.edge.server import EdgeServer
from tests.appserver.helpers import toml
from tests.sipp import free_port, run_sipp


def edge_config(
    port: int, pools: list[dict[str, Any]] | None = None, **sections: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sip": {"listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"]},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for name, values in sections.items():  # [sip] / [admin] keys add to the defaults above
        cfg[name] = {**cfg[name], **values} if name in cfg else values
    if pools:
        cfg["pool"] = pools
    return cfg


def pool(name: str, dests: list[str], **kw: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": name,
        "match": "^sip:(ivr|service|[0-9]+)@",
        "probe_interval": 0.5,
        "probe_timeout": 0.5,
    }
    p.update(kw)
    p["destination"] = [{"uri": d} for d in dests]
    return p


@contextlib.asynccontextmanager
async def running_edge(
    tmp_path: Path, pools: list[dict[str, Any]] | None = None, **sections: Any
) -> AsyncIterator[EdgeServer]:
    port = free_port()
    path = tmp_path / f"edge-{port}.toml"
    path.write_text(toml(edge_config(port, pools, **sections)))
    edge = EdgeServer(path)
    await edge.start()
    try:
        yield edge
    finally:
        await edge.close()


@contextlib.asynccontextmanager
async def sipp_destination(
    tmp_path: Path, xml: str, transport: str = "udp", port: int | None = None
) -> AsyncIterator[int]:
    port = port or free_port()
    path = tmp_path / f"dest-{port}.xml"
    path.write_text(xml)
    args = ["-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-mp", str(free_port())]
    if transport == "tcp":
        args += ["-t", "t1"]
    task = asyncio.create_task(run_sipp(*args, timeout=120))
    await asyncio.sleep(0.3)  # SIPp binds its port right after start
    try:
        yield port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def edge_port(edge: EdgeServer) -> int:
    return edge.stack.local("udp").port


async def wait_dest_state(
    edge: EdgeServer, pool_index: int, dest_index: int, state: str, timeout: float = 10.0
) -> float:
    """Wait for a destination state; "active" also needs an answered probe (destinations
    start presumed up, so the state alone does not prove the peer is there)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    dest = edge.pools[pool_index].destinations[dest_index]
    while dest.state != state or (state == "active" and dest.last_probe_code is None):
        if loop.time() - start > timeout:
            d = edge.pools[pool_index].destinations[dest_index]
            raise AssertionError(
                f"destination {dest_index} is {d.state} ({d.last_probe_reason}), not {state}"
            )
        await asyncio.sleep(0.01)
    return loop.time() - start


async def calls_through(
    tmp_path: Path,
    edge: EdgeServer,
    expect: str,
    n: int = 1,
    rate: int = 10,
    *extra: str,
    user: str = "ivr",
    domain: str | None = None,
) -> str:
    """SIPp calls ``user`` (at the edge's address, or at ``domain``) through the edge and
    must see the responses in ``expect`` (see ``scenarios.caller``)."""
    from tests.edge.scenarios import caller

    path = tmp_path / f"caller-{free_port()}.xml"
    path.write_text(caller(expect, domain) if domain else caller(expect))
    host = edge.stack.local("udp").host
    result = await run_sipp(
        "-sf", str(path), f"{host}:{edge_port(edge)}", "-s", user, "-m", str(n), "-r", str(rate),
        "-l", "50", "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()), *extra, timeout=60,
    )  # fmt: skip
    assert result.ok, result.output[-3000:]
    return result.output


@contextlib.asynccontextmanager
async def a_then_b(
    tmp_path: Path, flow_a: str, flow_b: str, **pool_kw: Any
) -> AsyncIterator[EdgeServer]:
    """Two SIPp destinations behind an edge, A preferred (priority 0) and B the fallback
    (priority 1); yields once A answered a probe."""
    from tests.edge.scenarios import destination

    async with (
        sipp_destination(tmp_path, destination(flow_a)) as a,
        sipp_destination(tmp_path, destination(flow_b)) as b,
    ):
        pools = [
            pool(
                "ivr", [f"sip:127.0.0.1:{a}", f"sip:127.0.0.1:{b}"], algorithm="priority", **pool_kw
            )
        ]
        pools[0]["destination"][1]["priority"] = 1
        async with running_edge(tmp_path, pools) as edge:
            await wait_dest_state(edge, 0, 0, "active")
            yield edge
