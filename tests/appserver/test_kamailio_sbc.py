"""Kamailio (Debian) as the SBC in front of two sipha appservers.

Its dispatcher probes both with OPTIONS. A drained server is marked inactive and gets no
calls; an INVITE that reaches a draining server before the SBC notices gets 503 with no
18x, and the SBC's failure route sends it to the other server. 0 calls fail either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipha.appserver.server import AppServer
from tests.appserver.helpers import running_appserver, sip_port, wait_until
from tests.sipp import SCENARIOS, free_port, run_sipp, stop_process

KAMAILIO = shutil.which("kamailio")
pytestmark = pytest.mark.skipif(
    KAMAILIO is None and not os.environ.get("CI"), reason="kamailio (Debian) not installed"
)

TEMPLATE = Path(__file__).with_name("kamailio-sbc.cfg.in")


@contextlib.asynccontextmanager
async def kamailio(tmp_path: Path, a: AppServer, b: AppServer, ping: int) -> AsyncIterator[int]:
    port = free_port()
    lst = tmp_path / "dispatcher.list"
    lst.write_text(f"1 sip:127.0.0.1:{sip_port(a)}\n1 sip:127.0.0.1:{sip_port(b)}\n")
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(
        TEMPLATE.read_text()
        .replace("@PORT@", str(port))
        .replace("@LIST@", str(lst))
        .replace("@PING@", str(ping))
    )
    assert KAMAILIO is not None
    proc = await asyncio.create_subprocess_exec(
        KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(tmp_path), "-m", "64",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield port
    finally:
        await stop_process(proc)


def options_seen(server: AppServer, code: str) -> int:
    total = 0
    for metric in server.metrics.options.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("code") == code:
                total += int(sample.value)
    return total


async def calls_through(port: int, n: int) -> None:
    result = await run_sipp(
        "-sf", str(SCENARIOS / "uac_rr.xml"), f"127.0.0.1:{port}", "-m", str(n), "-r", "10", "-l", "10", "-d", "200",
        "-i", "127.0.0.1", "-p", str(free_port()), timeout=40,
    )  # fmt: skip
    assert result.ok, result.output[-2500:]
    assert re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", result.output)[-1] == str(n)


HOLD = {"handler": "tests.apps:hold"}


async def test_drained_server_is_marked_inactive_and_gets_no_calls(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_appserver(tmp_path / "a", app=HOLD) as a,
        running_appserver(tmp_path / "b", app=HOLD) as b,
        kamailio(tmp_path, a, b, ping=1) as port,
    ):
        # both are probed and answer 200
        await wait_until(lambda: options_seen(a, "200") >= 1 and options_seen(b, "200") >= 1, 15)
        a.drain(503, "test drain")
        await wait_until(lambda: options_seen(a, "503") >= 2, 10)  # the SBC saw the 503
        await calls_through(port, 20)
        assert a.counters == {}  # not one INVITE reached the drained server
        assert b.counters == {"answered": 20}


async def test_invite_reaching_a_draining_server_is_rerouted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # a long probe interval: the SBC does not learn of the drain before the calls come
    async with (
        running_appserver(tmp_path / "a", app=HOLD) as a,
        running_appserver(tmp_path / "b", app=HOLD) as b,
        kamailio(tmp_path, a, b, ping=300) as port,
    ):
        await asyncio.sleep(1.0)  # kamailio forks its workers
        a.drain(503, "test drain")
        await calls_through(port, 20)
        rejected = a.counters.get("rejected_maintenance", 0)
        assert rejected >= 1  # round-robin sent INVITEs to A, which said 503 (no 18x)
        assert b.counters == {"answered": 20}  # and every one of them was re-routed to B
