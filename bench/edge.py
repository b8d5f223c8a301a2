"""Calls per second through the edge: sipha against Kamailio 5.6, side by side in one run.

SIPp ``uac`` (tests/sipp/uac_rr.xml: INVITE/180/200/ACK, BYE after 100 ms, through a
record-routing proxy) -> proxy -> two SIPp callees. Rates rise step by step; a step passes
when every call succeeded and retransmissions stayed under 1 % of the INVITEs (beyond that
the proxy is late, a retransmission storm in the making). The proxies: ``sipha edge``
(one process) with a round-robin pool, and Kamailio with the dispatcher doing the same job
(tests/appserver/kamailio-sbc.cfg.in, one worker), in the same run.

    python bench/edge.py [--rates 50,100,...] [--step-seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.appserver.helpers import toml  # noqa: E402
from tests.edge.scenarios import ANSWER, destination  # noqa: E402
from tests.sipp import SCENARIOS, free_port, run_sipp, stop_process  # noqa: E402

from bench.steps import climb, print_summary  # noqa: E402

DEFAULT_RATES = [25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1250, 1500, 2000]


@contextlib.asynccontextmanager
async def callees(tmp: Path) -> AsyncIterator[list[int]]:
    ports = [free_port(), free_port()]
    xml = tmp / "callee.xml"
    xml.write_text(destination(ANSWER))
    tasks = [
        asyncio.create_task(
            run_sipp(
                "-sf",
                str(xml),
                "-i",
                "127.0.0.1",
                "-p",
                str(p),
                "-mp",
                str(free_port()),
                timeout=3600,
            )
        )
        for p in ports
    ]
    await asyncio.sleep(0.5)
    try:
        yield ports
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


@contextlib.asynccontextmanager
async def sipha_edge(tmp: Path, dests: list[int]) -> AsyncIterator[int]:
    port = free_port()
    cfg = {
        "sip": {"listen": [f"udp:127.0.0.1:{port}"]},
        "admin": {"listen": ""},
        "protection": {"rate": 100000, "burst": 100000, "hard_limit": 1000000,
                       "max_transactions": 10**7, "max_transactions_per_source": 10**7},
        "pool": [
            {
                "name": "ivr",
                "match": "^sip:",
                "probe_interval": 5,
                "destination": [{"uri": f"sip:127.0.0.1:{p}"} for p in dests],
            }
        ],
    }
    path = tmp / "edge.toml"
    path.write_text(toml(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipha.cli",
        "edge",
        "-c",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(1.5)
    try:
        yield port
    finally:
        await stop_process(proc)


@contextlib.asynccontextmanager
async def kamailio(tmp: Path, dests: list[int]) -> AsyncIterator[int | None]:
    binary = shutil.which("kamailio")
    if binary is None:
        yield None
        return
    port = free_port()
    lst = tmp / "dispatcher.list"
    lst.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in dests))
    cfg = (ROOT / "tests" / "appserver" / "kamailio-sbc.cfg.in").read_text()
    cfg = cfg.replace("@PORT@", str(port)).replace("@LIST@", str(lst)).replace("@PING@", "5")
    cfg = cfg.replace("children=2", "children=1").replace("debug=2", "debug=0")
    (tmp / "kamailio.cfg").write_text(cfg)
    proc = await asyncio.create_subprocess_exec(
        binary, "-f", str(tmp / "kamailio.cfg"), "-DD", "-E", "-Y", str(tmp), "-m", "256",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(1.5)
    try:
        yield port
    finally:
        await stop_process(proc)


async def step(port: int, rate: int, seconds: float) -> tuple[bool, str]:
    n = max(1, int(rate * seconds))
    result = await run_sipp(
        "-sf", str(SCENARIOS / "uac_rr.xml"), f"127.0.0.1:{port}", "-s", "ivr",
        "-r", str(rate), "-m", str(n), "-l", str(max(100, rate * 2)), "-d", "100",
        "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
        timeout=seconds * 4 + 15,
    )  # fmt: skip
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", result.output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", result.output)
    retrans = re.findall(r"INVITE\s*-+>\s+\d+\s+(\d+)", result.output)
    n_ok = int(ok[-1]) if ok else 0
    n_failed = int(failed[-1]) if failed else n
    n_retrans = int(retrans[-1]) if retrans else 0
    good = result.ok and n_ok == n and n_failed == 0 and n_retrans <= n // 100
    return good, f"{n_ok}/{n} ok, {n_failed} failed, {n_retrans} INVITE retransmissions"


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    ap.add_argument("--step-seconds", type=float, default=3.0)
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print("calls/s through a proxy to two SIPp callees (INVITE..BYE, 100 ms calls, UDP loopback)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with callees(tmp) as dests:
            async with sipha_edge(tmp, dests) as port:
                sipha = await climb("sipha", "calls/s", step, port, rates, args.step_seconds)
            async with kamailio(tmp, dests) as kport:
                kam = (
                    await climb("kamailio", "calls/s", step, kport, rates, args.step_seconds)
                    if kport
                    else None
                )
    print_summary("proxy", "max calls/s, 0 failed", sipha, "kamailio 5.6 (1 worker)", kam)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
