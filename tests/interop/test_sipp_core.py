"""The SIP core against SIPp: calls both ways over UDP and TCP, OPTIONS, time-outs."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from sipha.sip.timers import TimerConfig
from sipha.sip.transaction import Target
from sipha.stack import SipStack, TransactionTimeoutError
from sipha.ua import UserAgent, simple_sdp
from tests.sipp import (
    SCENARIOS,
    free_port,
    needs_sipp,
    run_sipp,
    sipp_background,
    start_example,
    stop_process,
)

pytestmark = [needs_sipp, pytest.mark.sipp]


def counts(output: str) -> tuple[int, int]:
    """(successful, failed) calls from SIPp's final statistics screen."""
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    assert ok and failed, output[-1500:]
    return int(ok[-1]), int(failed[-1])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_uac_to_sipha_uas_50_calls(transport: str) -> None:
    port = free_port()
    proc = await start_example("uas.py", f"{transport}:127.0.0.1:{port}")
    try:
        args = ["-sn", "uac", f"127.0.0.1:{port}", "-m", "50", "-r", "25", "-l", "20"]
        args += ["-i", "127.0.0.1", "-p", str(free_port())]
        if transport == "tcp":
            args += ["-t", "t1"]
        result = await run_sipp(*args, timeout=40)
        assert result.ok, result.output[-2000:]
        assert counts(result.output) == (50, 0)
    finally:
        await stop_process(proc)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipha_uac_to_sipp_uas_50_calls(transport: str) -> None:
    port = free_port()
    args = ["-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-m", "50"]
    if transport == "tcp":
        args += ["-t", "t1"]
    async with sipp_background(*args, timeout=40) as sipp:
        await asyncio.sleep(0.5)  # SIPp binds its port right after start
        async with SipStack([f"{transport}:127.0.0.1:0"]) as stack:
            ua = UserAgent(stack, user="caller")
            target = Target(transport, "127.0.0.1", port)
            sdp = simple_sdp("127.0.0.1", 30000)
            failures: list[str] = []

            async def one_call(i: int) -> None:
                try:
                    uri = f"sip:service@127.0.0.1:{port}"
                    call = await ua.invite(uri, target=target, body=sdp)
                    bye = await call.bye()
                    assert bye is not None and bye.status == 200
                except Exception as exc:  # noqa: BLE001 - every failure is collected and asserted
                    failures.append(f"call {i}: {exc!r}")

            sem = asyncio.Semaphore(10)

            async def limited(i: int) -> None:
                async with sem:
                    await one_call(i)

            await asyncio.gather(*(limited(i) for i in range(50)))
            assert failures == []
            # SIPp's uas lingers 4 s after each BYE; closing our TCP connection before it
            # is done would fail its last call, so wait for it with the stack still up
            result = await asyncio.wait_for(sipp, 30)
    assert result.ok, result.output[-2000:]
    assert counts(result.output) == (50, 0)


async def test_options_from_sipp_answered_200_with_allow_and_accept() -> None:
    port = free_port()
    async with SipStack([f"udp:127.0.0.1:{port}"]) as stack:
        ua = UserAgent(stack)
        result = await run_sipp(
            "-sf", str(SCENARIOS / "options_uac.xml"), f"127.0.0.1:{port}",
            "-m", "5", "-i", "127.0.0.1", "-p", str(free_port()), timeout=20,
        )  # fmt: skip
        assert result.ok, result.output[-2000:]
        assert counts(result.output) == (5, 0)
        assert ua.options_requests == 5


@pytest.mark.parametrize("timeout_ms", [1500, 3000])
async def test_unanswered_invite_times_out_at_sip_transaction_timeout(timeout_ms: int) -> None:
    port = free_port()
    args = ["-sf", str(SCENARIOS / "uas_silent.xml"), "-i", "127.0.0.1", "-p", str(port), "-m", "1"]
    async with sipp_background(*args, timeout=20):
        await asyncio.sleep(0.5)
        timers = TimerConfig.with_transaction_timeout_ms(timeout_ms)
        async with SipStack(["udp:127.0.0.1:0"], timers=timers) as stack:
            ua = UserAgent(stack)
            start = time.monotonic()
            with pytest.raises(TransactionTimeoutError):
                await ua.invite(
                    f"sip:silent@127.0.0.1:{port}", target=Target("udp", "127.0.0.1", port)
                )
            elapsed = time.monotonic() - start
    assert elapsed == pytest.approx(timeout_ms / 1000, rel=0.10)
